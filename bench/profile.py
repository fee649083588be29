"""Where the gateway's CPU goes: py-spy on a gateway under load, summarized.

Theory of operation: ``record()`` attaches ``py-spy record`` to a running gateway (by pid,
``--nonblocking`` so the gateway is never stopped to be read, at ``SAMPLE_RATE_HZ``), and
``stop()`` ends it with SIGINT, on which py-spy writes a speedscope JSON file (open it at
https://www.speedscope.app). ``summarize()`` reads that file: py-spy records only samples
in which a thread was running (idle waits in epoll are left out), so every sample is CPU
the process spent. Each sample is a stack of frames; its last frame gets the "self" count,
and every distinct function on it the "total" count. Time inside C (uvloop's loop, the
kernel's send and receive) is charged to the Python frame that called into it, which is
what a Python optimization can act on.

A profiled run is not a measured run: py-spy's reading costs the target a little, so the
profile is taken in a separate run after the matrix and its figures stay out of the table.
"""

from __future__ import annotations

import collections
import json
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

SAMPLE_RATE_HZ = 250
STOP_TIMEOUT_S = 30.0


@dataclass
class Summary:
    samples: int
    seconds: float
    top_self: list[tuple[str, float]]
    top_total: list[tuple[str, float]]
    by_file: list[tuple[str, float]]


def py_spy_path() -> str | None:
    return shutil.which("py-spy") or _venv_py_spy()


def _venv_py_spy() -> str | None:
    import sys

    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else None


def record(pid: int, out: Path, subprocesses: bool = False) -> subprocess.Popen[bytes]:
    binary = py_spy_path()
    if binary is None:
        raise FileNotFoundError("py-spy is not installed (pip install -e '.[bench]')")
    cmd = [binary, "record", "--pid", str(pid), "--rate", str(SAMPLE_RATE_HZ)]
    cmd += ["--format", "speedscope", "--output", str(out), "--nonblocking"]
    if subprocesses:
        cmd.append("--subprocesses")
    log = out.with_suffix(".log")
    with log.open("wb") as err:
        return subprocess.Popen(cmd, stdout=err, stderr=err)


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def short_file(path: str) -> str:
    for marker in ("site-packages/", "/clawproxy/", "/bench/"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail if marker == "site-packages/" else marker.strip("/") + "/" + tail
    if "/lib/python3" in path:
        return "stdlib/" + path.split("/lib/python3", 1)[1].split("/", 1)[-1]
    return path.rsplit("/", 1)[-1]


def summarize(path: Path, top: int = 15) -> Summary:
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    names = [f"{f['name']} ({short_file(f.get('file', '?'))})" for f in frames]
    files = [short_file(f.get("file", "?")) for f in frames]
    self_counts: collections.Counter[str] = collections.Counter()
    total_counts: collections.Counter[str] = collections.Counter()
    file_counts: collections.Counter[str] = collections.Counter()
    samples = 0
    seconds = 0.0
    for profile in data["profiles"]:
        # py-spy weighs each sample by its interval in seconds.
        weights = profile.get("weights") or [1.0 / SAMPLE_RATE_HZ] * len(profile["samples"])
        for stack, weight in zip(profile["samples"], weights, strict=True):
            if not stack:
                continue
            samples += 1
            seconds += weight
            leaf = stack[-1]
            self_counts[names[leaf]] += weight
            file_counts[files[leaf]] += weight
            for name in {names[i] for i in stack}:
                total_counts[name] += weight
    share = 100.0 / seconds if seconds else 0.0

    def rank(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(name, count * share) for name, count in counter.most_common(top)]

    return Summary(samples, seconds, rank(self_counts), rank(total_counts), rank(file_counts))


def markdown(summary: Summary, speedscope: Path) -> str:
    lines = [
        f"{summary.samples} samples of a running thread at {SAMPLE_RATE_HZ} Hz "
        f"({summary.seconds:.1f} s); speedscope file: `{speedscope}`.",
        "",
        "| self % | function (file) |",
        "|---:|---|",
    ]
    lines += [f"| {pct:.1f} | `{name}` |" for name, pct in summary.top_self]
    lines += ["", "| total % | function (file) |", "|---:|---|"]
    lines += [f"| {pct:.1f} | `{name}` |" for name, pct in summary.top_total]
    lines += ["", "| self % | file |", "|---:|---|"]
    lines += [f"| {pct:.1f} | `{name}` |" for name, pct in summary.by_file]
    return "\n".join(lines)
