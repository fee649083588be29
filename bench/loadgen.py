"""The load generator: N concurrent streaming requests, timed per token, in one process.

    python -m bench.loadgen --port P --format sse --streams 100 --tokens 200 --ramp 1 \
        --probes 40 --probe-start 1.5 --probe-interval 0.05

Theory of operation: one uvloop event loop, one ``asyncio.Protocol`` per stream and one
connection per stream (``Connection: close``), the request pre-rendered once. Stream i
connects at ``start + i * ramp / N``, so every path sees the same arrivals. Each read goes
through ``httpwire`` (de-chunking, line split, token count) inside ``data_received``; no
task switch and no HTTP library per token, so the generator stays cheap (its own CPU per
token is reported next to the others to prove it).

Paired runs (``--pair-port``): a second target gets its own N streams (and probes) in the
same run, each started half a step after its counterpart on the first, so both see the
same moments of the machine; the result then holds the second target's figures under
``pair``. The runner pairs a middle process with the direct path this way: on shared
cores the noise between two separate runs is larger than the effects being measured
(inter-token gaps, added TTFT), and in one run that noise (a stalled simulator, a stolen
CPU) hits both sides alike.

Probes measure what a *new* request sees while the N streams run: probe i connects at
``start + probe_start + i * probe_interval`` with the same kind of request asking for one
token. They have their own tallies (a second ``Run``), so they count in none of the main
figures. Around them (the probe window, from just before the first to just after the last
has ended) the generator reads the CPU time of the processes named by ``--cpu-pid``, its
own, and the main streams' tokens so far, so the runner can leave the probes' requests
out of its per-token CPU figures.

What is measured, on the loop's monotonic clock:

* TTFT: from writing the request to the read that carried the first token.
* Inter-token gap: time between the reads that carried consecutive tokens of one stream;
  a read carrying k tokens contributes one gap and k - 1 zeros, which is what a client sees.
  Gaps inside the probe window are not counted: there the probes' own requests compete
  with the streams, a load of its own that the gap figures are not about.
* Tokens delivered, in order (the simulator numbers them), and whether each stream ended
  properly (its end line and the final chunk), else why not.

The result is one JSON object on stdout (percentiles already taken), so the runner never
parses anything else. A stream that has not ended by the deadline is aborted and counted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from array import array
from collections.abc import Sequence
from typing import Any, cast

from .httpwire import NDJSON_END, SSE_END, ResponseReader, TokenScanner, WireError
from .proctree import cpu_seconds, cpu_ticks_seconds

# The model the simulator's catalog and the gateway's default agree on.
MODEL = "qwen3:32b"
# Beyond the slowest expected stream, how long the run may take before streams are aborted.
DEADLINE_SLACK_S = 30.0
# Socket errors that end a stream (and are counted), never the run.
CONNECT_ERRORS = (OSError, asyncio.TimeoutError)
# The probe window's CPU readings: taken this long before the first probe connects and
# after the last one ended (its connection is closed on both ends by then).
PROBE_SAMPLE_LEAD_S = 0.02
PROBE_SETTLE_S = 0.02


def build_request(fmt: str, host: str, port: int, tokens: int) -> bytes:
    """The one request every stream sends: Ollama's /api/chat (ndjson) or OpenAI's (sse).

    ``tokens`` is asked for explicitly (num_predict / max_tokens), so the count does not
    depend on the simulator's default.
    """
    messages = [{"role": "user", "content": "Count for me."}]
    if fmt == "sse":
        path = "/v1/chat/completions"
        payload: dict[str, Any] = {
            "model": MODEL,
            "messages": messages,
            "stream": True,
            "max_tokens": tokens,
        }
    else:
        path = "/api/chat"
        payload = {
            "model": MODEL,
            "messages": messages,
            "stream": True,
            "options": {"num_predict": tokens},
        }
    body = json.dumps(payload, separators=(",", ":")).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: */*\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class Run:
    """Shared by every stream of one run: the request, the clock and the tallies."""

    def __init__(self, request: bytes, end_marker: bytes, streams: int, port: int = 0) -> None:
        self.request = request
        self.port = port
        self.end_marker = end_marker
        self.streams = streams
        self.clock = time.monotonic
        self.ttfts = array("d")
        self.gaps = array("d")
        # Off during the probe window: the probes' own requests would show as gaps.
        self.timing_gaps = True
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.tokens = 0
        # Tokens read so far, streams still open included (tokens counts ended streams).
        self.delivered = 0
        self.out_of_order = 0
        self.first_sent = 0.0
        self.last_token = 0.0
        self.open: set[StreamClient] = set()
        self.finished = 0
        self.all_done: asyncio.Future[None] | None = None

    def arm(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """The future that resolves when every stream has ended (at once if there are none)."""
        self.all_done = loop.create_future()
        self._check_done()
        return self.all_done

    def stream_ended(self, client: StreamClient, outcome: str) -> None:
        self.open.discard(client)
        scanner = client.scanner
        self.tokens += scanner.tokens
        self.out_of_order += scanner.out_of_order
        self.count(outcome)

    def count(self, outcome: str, streams: int = 1) -> None:
        """``streams`` streams ended with ``outcome``."""
        self.outcomes[outcome] += streams
        self.finished += streams
        self._check_done()

    def _check_done(self) -> None:
        done = self.all_done
        if self.finished >= self.streams and done is not None and not done.done():
            done.set_result(None)


class StreamClient(asyncio.Protocol):
    """One streaming request on its own connection."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.reader = ResponseReader()
        self.scanner = TokenScanner(run.end_marker)
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0
        self.last_at = 0.0
        self.ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.run.open.add(self)
        self.sent_at = self.run.clock()
        if not self.run.first_sent:
            self.run.first_sent = self.sent_at
        self.transport.write(self.run.request)

    def data_received(self, data: bytes) -> None:
        if self.ended:
            return
        try:
            body = self.reader.feed(data)
        except WireError as exc:
            self._end(f"bad_http: {exc}")
            return
        if body:
            found = self.scanner.feed(body)
            if found:
                now = self.run.clock()
                run = self.run
                if not self.last_at:
                    run.ttfts.append(now - self.sent_at)
                elif run.timing_gaps:
                    run.gaps.append(now - self.last_at)
                if run.timing_gaps:
                    for _ in range(found - 1):
                        run.gaps.append(0.0)
                run.delivered += found
                self.last_at = now
                run.last_token = now
        if self.reader.done:
            if self.reader.status != 200:
                self._end(f"http_{self.reader.status}")
            elif self.scanner.ended:
                self._end("complete")
            else:
                self._end("no_end_line")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended:
            status = self.reader.status
            self._end(f"http_{status}_cut" if status else "closed_before_head")

    def _end(self, outcome: str) -> None:
        self.ended = True
        if self.transport is not None:
            self.transport.close()
        self.run.stream_ended(self, outcome)

    def abort(self) -> None:
        if not self.ended:
            self._end("timeout")
            if self.transport is not None:
                self.transport.abort()


async def drive(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    run, probes = _runs(args, args.port, args.format)
    # Paired: the same streams and probes on the second target, in the same run.
    twin = twin_probes = None
    if args.pair_port:
        twin, twin_probes = _runs(args, args.pair_port, args.pair_format)
    mains = [run] if twin is None else [run, twin]
    all_probes = [probes] if twin_probes is None else [probes, twin_probes]
    targets = mains + all_probes
    waits: set[asyncio.Future[Any]] = {target.arm(loop) for target in targets}
    tasks: set[asyncio.Task[None]] = set()

    async def connect(target: Run) -> None:
        try:
            await loop.create_connection(lambda: StreamClient(target), args.host, target.port)
        except CONNECT_ERRORS as exc:
            target.count(f"connect_{type(exc).__name__}")

    def launch(target: Run) -> None:
        task = loop.create_task(connect(target))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    cpu0 = time.process_time()
    start = loop.time() + 0.01
    step = args.ramp / args.streams if args.streams else 0.0
    for i in range(args.streams):
        # A twin's stream starts half a step after its first-target counterpart.
        for k, target in enumerate(mains):
            loop.call_at(start + (i + k / 2) * step, launch, target)
    deadline = args.deadline
    window: dict[str, Any] | None = None
    watch: asyncio.Task[dict[str, Any]] | None = None
    if args.probes > 0:
        first = start + args.probe_start
        for i in range(args.probes):
            for k, target in enumerate(all_probes):
                loop.call_at(first + (i + k / 2) * args.probe_interval, launch, target)
        probes_end = args.probe_start + args.probes * args.probe_interval
        deadline = max(deadline, probes_end + DEADLINE_SLACK_S)
        watch = loop.create_task(probe_window(mains, all_probes, first, args.cpu_pid or []))
        waits.add(watch)
    _, pending = await asyncio.wait(waits, timeout=deadline)
    if pending:
        for target in targets:
            for client in list(target.open):
                client.abort()
        for task in list(tasks):
            task.cancel()
        if watch is not None:
            watch.cancel()
        for target in targets:
            # Streams that never connected are not "open": count them as timed out too.
            if target.finished < target.streams:
                target.count("timeout_not_connected", target.streams - target.finished)
    elif watch is not None:
        window = watch.result()
    cpu = time.process_time() - cpu0
    # Let aborted transports close before the loop goes.
    await asyncio.sleep(0)
    result = summarize(run, probes, args, cpu, window)
    if twin is not None and twin_probes is not None:
        result["pair"] = summarize(twin, twin_probes, args, cpu, None)
    return result


def _runs(args: argparse.Namespace, port: int, fmt: str) -> tuple[Run, Run]:
    """One target's streams and probes."""
    end = SSE_END if fmt == "sse" else NDJSON_END
    streams = Run(build_request(fmt, args.host, port, args.tokens), end, args.streams, port)
    probes = Run(build_request(fmt, args.host, port, 1), end, args.probes, port)
    return streams, probes


async def probe_window(
    mains: list[Run], all_probes: list[Run], first_at: float, pids: list[int]
) -> dict[str, Any]:
    """CPU and main-stream tokens (of the first target) from just before the first probe
    to after the last one; no gaps are timed in between, on any target."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, first_at - PROBE_SAMPLE_LEAD_S - loop.time()))
    run = mains[0]
    before = _sample(run, pids)
    for main in mains:
        main.timing_gaps = False
    for probes in all_probes:
        assert probes.all_done is not None
        await probes.all_done
    await asyncio.sleep(PROBE_SETTLE_S)
    for main in mains:
        main.timing_gaps = True
    after = _sample(run, pids)
    return {
        key: (
            {pid: after[key][pid] - v for pid, v in before[key].items()}
            if isinstance(before[key], dict)
            else after[key] - before[key]
        )
        for key in before
    }


def _sample(run: Run, pids: list[int]) -> dict[str, Any]:
    return {
        "s": time.monotonic(),
        "tokens": run.delivered,
        "loadgen_cpu_s": time.process_time(),
        "cpu_s": {str(pid): cpu_seconds(pid) for pid in pids},
        "cpu_ticks_s": {str(pid): cpu_ticks_seconds(pid) for pid in pids},
    }


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an already sorted sequence; None when empty."""
    if not values:
        return None
    index = min(len(values) - 1, max(0, round(fraction * len(values) + 0.5) - 1))
    return values[index]


def summarize(
    run: Run,
    probes: Run,
    args: argparse.Namespace,
    cpu_s: float,
    window: dict[str, Any] | None,
) -> dict[str, Any]:
    ttfts = sorted(run.ttfts)
    gaps = sorted(run.gaps)
    probe_ttfts = sorted(probes.ttfts)
    span = run.last_token - run.first_sent if run.last_token else 0.0
    return {
        "streams": args.streams,
        "completed": run.outcomes.get("complete", 0),
        "outcomes": dict(run.outcomes),
        "tokens": run.tokens,
        "expected_tokens": args.streams * args.tokens,
        "out_of_order": run.out_of_order,
        "ttft_p50_s": percentile(ttfts, 0.50),
        "ttft_p99_s": percentile(ttfts, 0.99),
        "gap_p50_s": percentile(gaps, 0.50),
        "gap_p99_s": percentile(gaps, 0.99),
        "gap_max_s": gaps[-1] if gaps else None,
        "span_s": span,
        "tokens_per_s": run.tokens / span if span > 0 else 0.0,
        "loadgen_cpu_s": cpu_s,
        "probes": args.probes,
        "probes_completed": probes.outcomes.get("complete", 0),
        "probe_outcomes": dict(probes.outcomes),
        "probe_ttft_p50_s": percentile(probe_ttfts, 0.50),
        "probe_ttft_p99_s": percentile(probe_ttfts, 0.99),
        # None without probes, or when the run hit its deadline.
        "probe_window": window,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--format", choices=("ndjson", "sse"), required=True)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--ramp", type=float, default=1.0, help="seconds over which to start")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds, then abort")
    parser.add_argument("--probes", type=int, default=0, help="one-token requests while running")
    parser.add_argument(
        "--probe-start", type=float, default=0.0, help="first probe, seconds after the first stream"
    )
    parser.add_argument("--probe-interval", type=float, default=0.05, help="seconds between probes")
    parser.add_argument(
        "--pair-port", type=int, default=0, help="a second target, N streams of its own (0: none)"
    )
    parser.add_argument("--pair-format", choices=("ndjson", "sse"), default="ndjson")
    parser.add_argument(
        "--cpu-pid",
        type=int,
        action="append",
        help="process tree whose CPU the probe window reads (repeatable)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    import uvloop

    result = uvloop.run(drive(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
