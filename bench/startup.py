"""Start-up and idle memory, side by side: time to listening, idle RSS and private memory.

Theory of operation: each start spawns ``python -m clawproxy`` (this checkout's package,
and for ``--baseline DIR`` that checkout's, in turns) with a config that names an Ollama
nobody serves (start-up is lazy: nothing is asked of it), and times from the spawn to the
first accepted TCP connection on the public port. After a settle pause it reads the
process's RSS and its private memory (USS: ``Private_*`` of ``/proc/PID/smaps_rollup``, what
the process alone costs; RSS also counts the shared libraries' resident pages). The floor
rows are bare interpreters for scale: ``python`` alone, and ``python`` with the runtime
dependencies imported (asyncio imports ``ssl``, and OpenSSL 3 is ~5 MiB resident by itself).

    python -m bench.startup --starts 9 [--baseline DIR]

Medians of the starts; one row per tree. No figure here is asserted by a test.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

POLL_S = 0.001
START_TIMEOUT_S = 20.0
# How long a started gateway idles before its memory is read (its start-up tasks settled).
SETTLE_S = 1.0
FLOORS = {
    "python alone": "pass",
    "python + runtime deps": "import asyncio, uvloop, h11, orjson, yaml",
}
MEMORY_READER = (
    "import re, time; {imports}; time.sleep(0.2); "
    "print(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read())[1], "
    "sum(int(v) for v in re.findall(r'Private_\\w+:\\s+(\\d+)', "
    "open('/proc/self/smaps_rollup').read())))"
)


@dataclass
class Start:
    listening_ms: float
    rss_kib: int
    uss_kib: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def memory_kib(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status)[1])  # type: ignore[index]
    uss = sum(int(v) for v in re.findall(r"Private_\w+:\s+(\d+)", rollup))
    return rss, uss


def config_text(port: int) -> str:
    return (
        f"server: {{host: 127.0.0.1, port: {port}}}\n"
        "gateway: {debug_port: 0}\n"
        f"model: {{endpoint: 'http://127.0.0.1:{free_port()}'}}\n"
        "logging: {level: warning}\n"
    )


def one_start(source: Path | None, folder: Path) -> Start:
    port = free_port()
    config = folder / "gateway.yaml"
    config.write_text(config_text(port))
    cmd = [sys.executable, "-m", "clawproxy", "--config", str(config)]
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = str(source)
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=source or folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_listening(proc, port)
        listening_ms = (time.perf_counter() - started) * 1000
        time.sleep(SETTLE_S)
        rss, uss = memory_kib(proc.pid)
        return Start(listening_ms, rss, uss)
    finally:
        proc.terminate()
        proc.wait(10)


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def wait_until_listening(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not accepts(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the gateway did not listen (exit {proc.returncode})")
        time.sleep(POLL_S)


def floor(imports: str) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_READER.format(imports=imports)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]), int(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=9)
    parser.add_argument("--baseline", type=Path, help="another checkout, started in turns")
    args = parser.parse_args()
    trees: list[tuple[str, Path | None]] = [("gateway", None)]
    if args.baseline is not None:
        trees.append(("baseline", args.baseline.resolve()))
    runs: dict[str, list[Start]] = {name: [] for name, _ in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.starts):
            for name, source in trees:  # in turns: the machine's drift hits both alike
                runs[name].append(one_start(source, Path(tmp)))
    print(f"{args.starts} starts each, medians (min-max)\n")
    print("| tree | listening ms | idle RSS MiB | idle USS MiB |")
    print("|---|---:|---:|---:|")
    for name, starts in runs.items():
        print(
            f"| {name} | {_spread([s.listening_ms for s in starts])} "
            f"| {_spread([s.rss_kib / 1024 for s in starts])} "
            f"| {_spread([s.uss_kib / 1024 for s in starts])} |"
        )
    for label, imports in FLOORS.items():
        rss, uss = floor(imports)
        print(f"| {label} (floor) | - | {rss / 1024:.1f} | {uss / 1024:.1f} |")


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


if __name__ == "__main__":
    main()
