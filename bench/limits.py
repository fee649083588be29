"""Workers keep the GPU limit: ``python -m bench --limit-check --workers 4``.

Theory of operation: ``--workers N`` splits ``gateway.max_concurrent`` across the worker
processes (clawproxy/workers.py), so the sum of the shares must bound what Ollama sees.
This check starts the simulator (paced, so generations overlap) and a gateway with N
workers and a small ``max_concurrent`` and ``queue_size``, then sends more streams than
it admits, arriving over a ramp so that slots are freed and re-taken many times on every
worker. The simulator's high-water mark of concurrent generations (``max_active_streams``)
must not exceed ``max_concurrent``; the streams the gateway did not admit must have been
refused cleanly (503), never cut. Exit status 0 when both hold, 1 otherwise.
"""

from __future__ import annotations

import argparse

from .run import Load, Settings, run_loadgen
from .services import raise_fd_limit, simulator_stats, start_gateway, start_simulator

MAX_CONCURRENT = 6
QUEUE_SIZE = 4
STREAMS = 120
TOKENS = 20
RATE = 50.0
# Streams per second: with TOKENS / RATE = 0.4 s per stream that is ~16 wanted at once.
ARRIVALS = 40.0


def main(args: argparse.Namespace) -> int:
    raise_fd_limit()
    workers = max(2, args.workers)
    max_concurrent = max(MAX_CONCURRENT, workers)
    run_dir = args.out / f"limit-check-{workers}w"
    tokens = 5 if args.quick else TOKENS
    streams = 24 if args.quick else STREAMS
    sim = start_simulator(run_dir, RATE, tokens)
    try:
        gateway = start_gateway(run_dir, sim.port, workers, max_concurrent, QUEUE_SIZE)
        try:
            settings = Settings(run_dir, tokens, ARRIVALS, workers)
            result = run_loadgen(settings, Load(streams, RATE), gateway.port, "sse")
        finally:
            gateway.stop()
    finally:
        stats = simulator_stats(sim)
    peak = stats.get("max_active_streams", 0)
    outcomes: dict[str, int] = result["outcomes"]  # type: ignore[assignment]
    unclean = {k: v for k, v in outcomes.items() if k not in ("complete", "http_503")}
    print(
        f"{workers} workers, max_concurrent {max_concurrent}, queue_size {QUEUE_SIZE}: "
        f"{streams} streams -> {outcomes}"
    )
    print(f"simulator's peak of concurrent generations: {peak} (limit {max_concurrent})")
    ok = peak <= max_concurrent and not unclean
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1
