"""The simulator process of a benchmark run: ``python -m bench.simproc --port P --rate R``.

Theory of operation: the same ``OllamaSimulator`` that ``python -m clawproxy.simulator``
runs, on uvloop, with the numbered script (" t0001", " t0002", ... so the load generator
can check order) and a small record log (thousands of streams must not hold their bodies
in memory). It prints one JSON line when it listens (``{"port": P}``) and one when SIGTERM
or SIGINT stops it: the high-water mark of concurrent generations (``max_active_streams``,
what the workers limit check reads) and how many connections it served.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Sequence
from pathlib import Path

from clawproxy.simulator import OllamaSimulator, numbered_script

# Records kept for assertions; a benchmark reads only the counters.
MAX_RECORDS = 64


async def serve(args: argparse.Namespace) -> None:
    stamps = None
    if args.stamps is not None:
        from .simstamps import SimStamps

        stamps = SimStamps()
        stamps.install()
    sim = OllamaSimulator(
        host=args.host,
        port=args.port,
        token_rate=args.rate if args.rate > 0 else None,
        script=numbered_script(args.tokens),
        max_records=MAX_RECORDS,
    )
    await sim.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(json.dumps({"port": sim.port}), flush=True)
    await stop.wait()
    stats = {
        "max_active_streams": sim.max_active_streams,
        "active_streams": sim.active_streams,
        "connections_total": sim.connections_total,
    }
    await sim.close()
    if stamps is not None:
        stamps.save(args.stamps)
    print(json.dumps(stats), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.simproc", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate", type=float, default=40.0, help="tokens/s per stream; 0: max")
    parser.add_argument("--tokens", type=int, default=200, help="tokens when not asked")
    parser.add_argument(
        "--stamps", type=Path, help="write each request's read and reply stamps here (phases.py)"
    )
    args = parser.parse_args(argv)
    import uvloop

    uvloop.run(serve(args))


if __name__ == "__main__":
    main()
