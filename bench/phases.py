"""Where one request's time goes inside the gateway: ``python bench/phases.py``.

    .venv/bin/python bench/phases.py --requests 60 --spacing 0.002,0.05

Theory of operation: the simulator runs in its own process (``bench.simproc``, unpaced,
one token per reply) and the load generator in another (``bench.loadgen``), exactly as in
``python -m bench``; the gateway runs in this process, with a handful of its methods
wrapped to note a ``perf_counter_ns`` stamp when they are entered and when they return.
Each request (one client connection) gets a timeline from the moment its connection
object is created; the table prints, for every stamp, its median time since that start
and the median step from the stamp before it. Nothing in the gateway is changed except
those wrappers, which cost about a microsecond each.

What it shows: the gateway's own work before Ollama is asked, the time Ollama (here the
simulator) takes, and the work from Ollama's answer to the first token written. The
``--spacing`` between requests matters on small shared machines: a request that arrives
after the CPU has been idle or busy elsewhere finds its caches cold, and the same Python
then takes two to three times longer than back to back. Several spacings (comma-separated)
run one after the other in one invocation, each with a fresh simulator and gateway, and
print their tables side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from clawproxy import chat, server, upstream  # noqa: E402
from clawproxy import gateway as gateway_module  # noqa: E402
from clawproxy.config import config_from_mapping  # noqa: E402
from clawproxy.gateway import Gateway  # noqa: E402
from clawproxy.logs import setup_logging  # noqa: E402

Stamp = tuple[str, int]
# Requests at the start whose timelines are dropped (first connections, lazy imports).
WARM_UP_REQUESTS = 10

# (owner, method, label): what is stamped, in the order a request meets it.
WRAPPED: tuple[tuple[Any, str, str], ...] = (
    (server.HttpConnection, "__init__", "connection object"),
    (server.HttpConnection, "connection_made", "connection_made"),
    (server.HttpConnection, "data_received", "request bytes"),
    (server.HttpConnection, "_accept_head", "head parsed (h11)"),
    (server.HttpConnection, "_dispatch", "dispatch"),
    (chat, "plan_request", "plan (JSON, mapping)"),
    (upstream.UpstreamConnection, "begin", "request to Ollama"),
    (upstream.UpstreamConnection, "data_received", "Ollama's bytes"),
    (upstream.UpstreamConnection, "_on_head", "Ollama's head parsed (h11)"),
    (chat.SseRelay, "start", "relay start (inside Ollama's read)"),
    (chat.SseRelay, "run", "relay task"),
    (server.HttpConnection, "write", "client write"),
    (server.HttpConnection, "end_stream", "client end"),
    (gateway_module.Gateway, "request_finished", "metrics and access line"),
    (server.HttpConnection, "connection_lost", "connection closed"),
)


def install(stamps: list[Stamp]) -> None:
    clock = time.perf_counter_ns
    for owner, name, label in WRAPPED:
        original = getattr(owner, name)
        if asyncio.iscoroutinefunction(original):
            setattr(owner, name, _wrap_async(original, label, stamps, clock))
        else:
            setattr(owner, name, _wrap_sync(original, label, stamps, clock))


def _wrap_sync(
    original: Callable[..., Any], label: str, stamps: list[Stamp], clock: Callable[[], int]
) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        stamps.append((label, clock()))
        try:
            return original(*args, **kwargs)
        finally:
            stamps.append((label + " (done)", clock()))

    return wrapper


def _wrap_async(
    original: Callable[..., Any], label: str, stamps: list[Stamp], clock: Callable[[], int]
) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        stamps.append((label, clock()))
        try:
            return await original(*args, **kwargs)
        finally:
            stamps.append((label + " (done)", clock()))

    return wrapper


def timelines(stamps: Sequence[Stamp]) -> list[list[Stamp]]:
    """Split the stamps at each new connection object (one request per connection)."""
    out: list[list[Stamp]] = []
    for label, at in stamps:
        if label == "connection object":
            out.append([])
        if out:
            out[-1].append((label, at))
    return out[WARM_UP_REQUESTS:]


def table(requests: list[list[Stamp]]) -> str:
    since: dict[str, list[float]] = collections.defaultdict(list)
    steps: dict[str, list[float]] = collections.defaultdict(list)
    for stamps in requests:
        start = prev = stamps[0][1]
        seen: collections.Counter[str] = collections.Counter()
        for label, at in stamps:
            seen[label] += 1
            key = label if seen[label] == 1 else f"{label} #{seen[label]}"
            since[key].append((at - start) / 1000)
            steps[key].append((at - prev) / 1000)
            prev = at
    # Stamps most requests have, in the order they happen.
    common = [k for k in since if len(since[k]) >= len(requests) // 2]
    common.sort(key=lambda k: statistics.median(since[k]))
    lines = [f"{'stamp':<40} {'at µs':>9} {'step µs':>9}  (medians of {len(requests)})"]
    for key in common:
        median_at = statistics.median(since[key])
        median_step = statistics.median(steps[key])
        lines.append(f"{key:<40} {median_at:9.1f} {median_step:9.1f}")
    return "\n".join(lines)


async def measure(args: argparse.Namespace, spacing: float, stamps: list[Stamp]) -> str:
    """One run at one spacing, with a fresh simulator and gateway; its table."""
    py = sys.executable
    sim = subprocess.Popen(
        [py, "-m", "bench.simproc", "--rate", "0", "--tokens", "1"],
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert sim.stdout is not None
        port = json.loads(sim.stdout.readline())["port"]
        config = config_from_mapping(
            {},
            overrides={
                "server.host": "127.0.0.1",
                "server.port": 0,
                "gateway.debug_port": 0,
                "model.endpoint": f"http://127.0.0.1:{port}",
                "logging.file": str(args.log),
            },
        )
        setup_logging(config.logging)
        stamps.clear()
        gw = Gateway(config)
        gport = await gw.start()
        total = args.requests + WARM_UP_REQUESTS
        client = await asyncio.create_subprocess_exec(
            py,
            "-m",
            "bench.loadgen",
            "--port",
            str(gport),
            "--format",
            "sse",
            "--streams",
            str(total),
            "--tokens",
            "1",
            "--ramp",
            f"{total * spacing:.3f}",
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        out, _ = await client.communicate()
        await gw.stop(drain_timeout=1.0)
    finally:
        sim.terminate()
        sim.wait()
    result = json.loads(out.decode().strip().splitlines()[-1])
    ttft = result.get("ttft_p50_s")
    head = f"spacing {spacing * 1000:g} ms: {result['completed']}/{total} requests complete, "
    head += f"client TTFT p50 {ttft * 1000:.2f} ms" if ttft is not None else "client TTFT -"
    return head + "\n" + table(timelines(stamps))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/phases.py", description=__doc__)
    parser.add_argument("--requests", type=int, default=60, help="measured requests")
    parser.add_argument(
        "--spacing", default="0.05", help="seconds between requests; several: 0.002,0.05"
    )
    parser.add_argument("--log", type=Path, default=REPO / "bench" / "out" / "phases.log")
    args = parser.parse_args(argv)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    import uvloop

    stamps: list[Stamp] = []
    install(stamps)
    for spacing in (float(part) for part in args.spacing.split(",") if part.strip()):
        print(uvloop.run(measure(args, spacing, stamps)), end="\n\n", flush=True)


if __name__ == "__main__":
    main()
