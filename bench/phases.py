"""Where a new request's time goes inside the gateway: ``python bench/phases.py``.

    .venv/bin/python bench/phases.py --requests 60 --spacing 0.002,0.05
    .venv/bin/python bench/phases.py --requests 60 --load 100     # while 100 streams run

Theory of operation: the simulator runs in its own process (``bench.simproc``) and the
load generator in another (``bench.loadgen``), exactly as in ``python -m bench``; the
gateway runs in this process, with a handful of its methods wrapped to note a
``perf_counter_ns`` stamp when they are entered and when they return. Each measured
request (a one-token request on its own connection) gets a timeline from the moment its
connection object is created, keyed by that connection: stamps made inside its handler
task, on its Ollama connection or by its relay land on it, whatever else the loop runs in
between. The table prints, for every stamp, its median time since that start and the
median step from the stamp before it. Nothing in the gateway is changed except those
wrappers, which cost about a microsecond each.

What it shows: the gateway's own work before Ollama is asked, the time Ollama (here the
simulator, and the two trips to it) takes, and the work from Ollama's answer to the first
token written. The ``--spacing`` between requests matters on small shared machines: a
request that arrives after the CPU has been idle or busy elsewhere finds its caches cold,
and the same Python then takes two to three times longer than back to back. Several
spacings (comma-separated) run one after the other in one invocation, each with a fresh
simulator and gateway, and print their tables side by side.

``--load N`` measures the bench's "TTFT at N" regime instead: N streams paced at
``--load-rate`` tokens/s run through the gateway and N straight to the simulator (the
bench's paired runs), and the measured requests go both ways in turns, ``--spacing``
apart, once all streams run. The heading then gives the client's TTFT p50 both ways and
their difference, the added TTFT of the bench's budget line; the table is the gateway's
side. The background streams are not stamped (their timelines are dropped when their
handler starts), so the wrappers add little to the load.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import json
import math
import statistics
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.services import MAX_CONNECTIONS  # noqa: E402
from clawproxy import gateway as gateway_module  # noqa: E402
from clawproxy.app import chat, relay  # noqa: E402
from clawproxy.config import config_from_mapping  # noqa: E402
from clawproxy.gateway import Gateway  # noqa: E402
from clawproxy.http import server  # noqa: E402
from clawproxy.ollama.connection import UpstreamConnection  # noqa: E402
from clawproxy.telemetry.logs import setup_logging  # noqa: E402

Stamp = tuple[str, int]
# Measured requests at the start whose timelines are dropped (first connections, lazy imports).
WARM_UP_REQUESTS = 10
# --load: streams start at this rate (the bench's --arrivals), and the measured requests
# begin this long after the last one started, as the bench's probes do.
LOAD_ARRIVALS_PER_S = 100.0
LOAD_LEAD_S = 0.5
# The streams outlast the last measured request by this much.
LOAD_TAIL_S = 1.0


class Stamper:
    """Timelines of the measured requests, keyed by their client connection."""

    def __init__(self) -> None:
        self.open: dict[int, list[Stamp]] = {}
        self.done: list[list[Stamp]] = []
        # Which connection a handler task, or an Ollama connection, works for.
        self.tasks: weakref.WeakKeyDictionary[asyncio.Task[Any], int] = weakref.WeakKeyDictionary()
        self.upstreams: dict[int, int] = {}

    def reset(self) -> None:
        self.open.clear()
        self.done.clear()
        self.upstreams.clear()

    def task_key(self) -> int | None:
        task = asyncio.current_task()
        return None if task is None else self.tasks.get(task)

    def close(self, key: int) -> None:
        line = self.open.pop(key, None)
        if line is not None:
            self.done.append(line)


Keyer = Callable[[Stamper, tuple[Any, ...]], "int | None"]


def _own(st: Stamper, args: tuple[Any, ...]) -> int | None:
    return id(args[0])


def _new_connection(st: Stamper, args: tuple[Any, ...]) -> int | None:
    st.open[id(args[0])] = []
    return id(args[0])


def _handler(st: Stamper, args: tuple[Any, ...]) -> int | None:
    conn, request = args[0], args[1]
    key = id(conn)
    task = asyncio.current_task()
    if task is not None:
        st.tasks[task] = key
    if not _one_token(request.body):
        # A background stream: its timeline is not wanted, and no more stamps are taken.
        st.open.pop(key, None)
    return key


def _one_token(body: bytes) -> bool:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and parsed.get("max_tokens") == 1


def _in_handler(st: Stamper, args: tuple[Any, ...]) -> int | None:
    return st.task_key()


def _upstream_begin(st: Stamper, args: tuple[Any, ...]) -> int | None:
    key = st.task_key()
    if key is not None:
        st.upstreams[id(args[0])] = key
    return key


def _upstream(st: Stamper, args: tuple[Any, ...]) -> int | None:
    return st.upstreams.get(id(args[0]))


def _relay(st: Stamper, args: tuple[Any, ...]) -> int | None:
    return id(args[0].conn)


CLOSING = "connection closed"

# (owner, method, label, which timeline): what is stamped, in the order a request meets it.
WRAPPED: tuple[tuple[Any, str, str, Keyer], ...] = (
    (server.HttpConnection, "__init__", "connection object", _new_connection),
    (server.HttpConnection, "connection_made", "connection_made", _own),
    (server.HttpConnection, "data_received", "request bytes", _own),
    (server.HttpConnection, "_accept_head", "head parsed (h11)", _own),
    (server.HttpConnection, "_dispatch", "dispatch", _own),
    (server.HttpConnection, "_run", "handler task", _handler),
    (chat, "plan_request", "plan (JSON, mapping)", _in_handler),
    (UpstreamConnection, "begin", "request to Ollama", _upstream_begin),
    (UpstreamConnection, "data_received", "Ollama's bytes", _upstream),
    (UpstreamConnection, "_on_head", "Ollama's head parsed (h11)", _upstream),
    (relay.SseRelay, "on_head", "relay start (inside Ollama's read)", _relay),
    (relay.SseRelay, "run", "relay task", _relay),
    (server.HttpConnection, "write", "client write", _own),
    (server.HttpConnection, "end_stream", "client end", _own),
    (gateway_module.Gateway, "request_finished", "metrics and access line", _in_handler),
    (server.HttpConnection, "connection_lost", CLOSING, _own),
)


def install(st: Stamper) -> None:
    clock = time.perf_counter_ns
    for owner, name, label, key_of in WRAPPED:
        original = getattr(owner, name)
        wrap = _wrap_async if asyncio.iscoroutinefunction(original) else _wrap_sync
        setattr(owner, name, wrap(original, label, key_of, st, clock))


def _wrap_sync(
    original: Callable[..., Any],
    label: str,
    key_of: Keyer,
    st: Stamper,
    clock: Callable[[], int],
) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        key = key_of(st, args)
        line = None if key is None else st.open.get(key)
        if line is not None:
            line.append((label, clock()))
        try:
            return original(*args, **kwargs)
        finally:
            if line is not None and key is not None:
                line.append((label + " (done)", clock()))
                if label == CLOSING:
                    st.close(key)

    return wrapper


def _wrap_async(
    original: Callable[..., Any],
    label: str,
    key_of: Keyer,
    st: Stamper,
    clock: Callable[[], int],
) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        key = key_of(st, args)
        line = None if key is None else st.open.get(key)
        if line is not None:
            line.append((label, clock()))
        try:
            return await original(*args, **kwargs)
        finally:
            if line is not None:
                line.append((label + " (done)", clock()))

    return wrapper


SIM_READ = "simulator reads it"
SIM_WRITE = "simulator writes its reply"


def add_simulator(requests: list[list[Stamp]], records: Sequence[Sequence[int]]) -> None:
    """Put the simulator's stamps (``bench.simstamps``) into the timelines they belong to:
    the first request it read after the gateway wrote one and before the gateway read the
    answer."""
    reads = sorted((read, write) for read, write in records)
    starts = [read for read, _ in reads]
    for stamps in requests:
        sent = next((at for label, at in stamps if label == "request to Ollama"), None)
        back = next((at for label, at in stamps if label == "Ollama's bytes"), None)
        if sent is None or back is None:
            continue
        i = bisect.bisect_left(starts, sent)
        if i < len(reads) and reads[i][0] <= back and reads[i][1] <= back:
            stamps += [(SIM_READ, reads[i][0]), (SIM_WRITE, reads[i][1])]
            stamps.sort(key=lambda stamp: stamp[1])


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


def loadgen_args(args: argparse.Namespace, spacing: float, gport: int, sport: int) -> list[str]:
    """The load generator's options: the measured requests alone, or among --load streams."""
    total = args.requests + WARM_UP_REQUESTS
    if not args.load:
        common = ["--port", str(gport), "--format", "sse", "--streams", str(total)]
        return [*common, "--tokens", "1", "--ramp", f"{total * spacing:.3f}"]
    ramp = args.load / LOAD_ARRIVALS_PER_S
    window = total * spacing
    tokens = math.ceil(args.load_rate * (ramp + LOAD_LEAD_S + window + LOAD_TAIL_S))
    return [
        *("--port", str(gport), "--format", "sse", "--streams", str(args.load)),
        *("--tokens", str(tokens), "--ramp", f"{ramp:.3f}"),
        *("--probes", str(total), "--probe-start", f"{ramp + LOAD_LEAD_S:.3f}"),
        *("--probe-interval", f"{spacing:g}"),
        *("--pair-port", str(sport), "--pair-format", "ndjson"),
    ]


def heading(args: argparse.Namespace, spacing: float, result: dict[str, Any]) -> str:
    total = args.requests + WARM_UP_REQUESTS
    head = f"spacing {spacing * 1000:g} ms: "
    if not args.load:
        ttft = result.get("ttft_p50_s")
        head += f"{result['completed']}/{total} requests complete, "
        return head + (f"client TTFT p50 {ttft * 1000:.2f} ms" if ttft is not None else "-")
    pair = result.get("pair") or {}
    via, direct = result.get("probe_ttft_p50_s"), pair.get("probe_ttft_p50_s")
    head += f"{args.load} streams at {args.load_rate:g} tokens/s through the gateway and as many "
    head += f"direct; {result['probes_completed']}/{total} requests complete, "
    if via is None or direct is None:
        return head + "client TTFT -"
    return head + (
        f"client TTFT p50 {via * 1000:.2f} ms, direct {direct * 1000:.2f} ms, "
        f"added {(via - direct) * 1000:+.2f} ms"
    )


async def measure(args: argparse.Namespace, spacing: float, st: Stamper) -> str:
    """One run at one spacing, with a fresh simulator and gateway; its table."""
    py = sys.executable
    # Alone, the simulator answers at once; among paced streams it is paced like them, so
    # a one-token reply's first token comes alone with the head, as the bench's probes get.
    rate = args.load_rate if args.load else 0.0
    sim_stamps = args.log.with_name("phases-simulator.json")
    sim_stamps.unlink(missing_ok=True)
    sim = subprocess.Popen(
        [py, "-m", "bench.simproc", "--rate", f"{rate:g}", "--tokens", "1", "--stamps", sim_stamps],
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
                # As the bench's gateway: the limits out of the way of the load.
                "server.max_connections": MAX_CONNECTIONS,
                "gateway.max_concurrent": MAX_CONNECTIONS,
                "gateway.queue_size": 0,
            },
        )
        setup_logging(config.logging)
        st.reset()
        gw = Gateway(config)
        gport = await gw.start()
        client = await asyncio.create_subprocess_exec(
            py,
            "-m",
            "bench.loadgen",
            *loadgen_args(args, spacing, gport, port),
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        out, _ = await client.communicate()
        await gw.stop(drain_timeout=1.0)
    finally:
        sim.terminate()
        sim.wait()
    result = json.loads(out.decode().strip().splitlines()[-1])
    requests = st.done[WARM_UP_REQUESTS:]
    if sim_stamps.exists():
        add_simulator(requests, json.loads(sim_stamps.read_text()))
    return heading(args, spacing, result) + "\n" + table(requests)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/phases.py", description=__doc__)
    parser.add_argument("--requests", type=int, default=60, help="measured requests")
    parser.add_argument(
        "--spacing", default="0.05", help="seconds between requests; several: 0.002,0.05"
    )
    parser.add_argument(
        "--load", type=int, default=0, help="streams running meanwhile, each way (0: none)"
    )
    parser.add_argument("--load-rate", type=float, default=20.0, help="their tokens/s each")
    parser.add_argument("--log", type=Path, default=REPO / "bench" / "out" / "phases.log")
    args = parser.parse_args(argv)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    import uvloop

    st = Stamper()
    install(st)
    for spacing in (float(part) for part in args.spacing.split(",") if part.strip()):
        print(uvloop.run(measure(args, spacing, st)), end="\n\n", flush=True)


if __name__ == "__main__":
    main()
