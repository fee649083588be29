"""CPU time and memory of a process and all its descendants, read from /proc (Linux).

Theory of operation: a "middle" process may be several (nginx's master and worker, the
gateway's supervisor and workers), so every figure is a sum over the tree found through
``/proc/<pid>/task/<tid>/children``, walked afresh at each reading (workers may restart).

CPU: for each process, ``utime + stime`` from ``/proc/<pid>/stat`` counts all its threads,
living and exited, but only in clock ticks (10 ms here), too coarse for a one-stream run
that costs a few milliseconds. ``/proc/<pid>/task/<tid>/schedstat`` gives the same
scheduler accounting (``sum_exec_runtime``) in nanoseconds per thread. ``cpu_seconds()``
uses schedstat summed over threads when the kernel provides it and falls back to ticks;
``cpu_ticks_seconds()`` is always the tick figure, and the runner records both so they can
be compared. Memory: ``VmRSS`` now and ``VmHWM`` (peak since start; every benchmarked
process starts fresh for each run, so its HWM is the run's peak).
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
NANOS_PER_SECOND = 1_000_000_000
KIB = 1024


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (breadth first); gone processes are skipped."""
    found = [pid]
    index = 0
    while index < len(found):
        current = found[index]
        index += 1
        try:
            tasks = list((PROC / str(current) / "task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                text = (task / "children").read_text()
            except OSError:
                continue
            found.extend(int(child) for child in text.split())
    return found


def _stat_ticks(pid: int) -> int:
    text = (PROC / str(pid) / "stat").read_text()
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    # utime and stime are fields 14 and 15 of stat(5), i.e. 11 and 12 after the name.
    return int(fields[11]) + int(fields[12])


def _schedstat_ns(pid: int) -> int:
    total = 0
    for task in (PROC / str(pid) / "task").iterdir():
        total += int((task / "schedstat").read_text().split()[0])
    return total


def schedstat_available() -> bool:
    return (PROC / "self" / "schedstat").exists()


def cpu_ticks_seconds(pid: int) -> float:
    """utime + stime of the tree under ``pid``, in seconds (tick resolution)."""
    ticks = 0
    for proc in descendants(pid):
        try:
            ticks += _stat_ticks(proc)
        except (OSError, ValueError, IndexError):
            continue
    return ticks / TICKS_PER_SECOND


def cpu_seconds(pid: int) -> float:
    """CPU time of the tree under ``pid``, in seconds, as precise as the kernel allows."""
    if not schedstat_available():
        return cpu_ticks_seconds(pid)
    ns = 0
    for proc in descendants(pid):
        try:
            ns += _schedstat_ns(proc)
        except (OSError, ValueError, IndexError):
            continue
    return ns / NANOS_PER_SECOND


def _status_kib(pid: int, key: str) -> int:
    for line in (PROC / str(pid) / "status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


def rss_bytes(pid: int) -> int:
    """Resident memory of the tree under ``pid`` now."""
    total = 0
    for proc in descendants(pid):
        try:
            total += _status_kib(proc, "VmRSS:") * KIB
        except (OSError, ValueError):
            continue
    return total


def peak_rss_bytes(pid: int) -> int:
    """Sum of each living process's peak resident memory (VmHWM) in the tree."""
    total = 0
    for proc in descendants(pid):
        try:
            total += _status_kib(proc, "VmHWM:") * KIB
        except (OSError, ValueError):
            continue
    return total
