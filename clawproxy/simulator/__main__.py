"""Run the Ollama simulator standalone: ``python -m clawproxy.simulator``.

Theory of operation: parse flags, build one ``OllamaSimulator``, print one line with its
address (benchmarks and scripts read it), then serve until SIGINT or SIGTERM and close
cleanly. ``--uvloop`` runs it on uvloop through ``asyncio.Runner``'s loop factory rather
than a global policy, so importing this module changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Sequence

from .script import NUMBERED_DEFAULT_TOKENS, Fault, numbered_script
from .server import OLLAMA_VERSION, OllamaSimulator

# Bounded logs for long benchmark runs; nobody reads them from the command line.
CLI_MAX_RECORDS = 1000


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m clawproxy.simulator",
        description=f"A fake Ollama ({OLLAMA_VERSION} wire format) for demos and benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument(
        "--rate", type=float, default=40.0, help="tokens/s per stream; 0 = as fast as possible"
    )
    parser.add_argument(
        "--first-delay", type=float, default=0.0, help="seconds before each first token"
    )
    parser.add_argument(
        "--numbered", action="store_true", help='reply " t0001 t0002 ..." (exactness, bench)'
    )
    parser.add_argument(
        "--tokens",
        type=int,
        default=NUMBERED_DEFAULT_TOKENS,
        help="numbered tokens per reply when the request sets no num_predict",
    )
    parser.add_argument("--fault", default="", help='default fault, e.g. "stall_after=5"')
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    sim = OllamaSimulator(
        host=args.host,
        port=args.port,
        token_rate=args.rate if args.rate > 0 else None,
        first_token_delay=args.first_delay,
        script=numbered_script(args.tokens) if args.numbered else None,
        default_fault=Fault.parse(args.fault) if args.fault else None,
        max_records=CLI_MAX_RECORDS,
    )
    await sim.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"ollama simulator listening on {sim.endpoint}", flush=True)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await sim.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parse_args(argv)
    try:
        Fault.parse(args.fault)
    except (TypeError, ValueError) as exc:
        print(f"bad --fault: {exc}", file=sys.stderr)
        return 2
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if args.uvloop:
        import uvloop

        factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_serve(args))
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
