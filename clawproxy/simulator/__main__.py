"""Run the Ollama simulator standalone: ``python -m clawproxy.simulator``.

Theory of operation: parse flags, build ``--nodes`` simulators (one by default) on
consecutive ports, start them all, then print one line per node with its address, in
order (benchmarks and scripts read them), and serve until SIGINT or SIGTERM and close
cleanly. With ``--port 0`` every node gets a free port of its own. ``--models`` installs
the same models on every node, ``--node-models "a,b;c"`` a list per node; ``--num-parallel``
and ``--max-queue`` cap each node's generations like ``OLLAMA_NUM_PARALLEL`` and
``OLLAMA_MAX_QUEUE``; ``--tls-cert``/``--tls-key`` serve HTTPS. ``--uvloop`` runs it on
uvloop through ``asyncio.Runner``'s loop factory rather than a global policy, so importing
this module changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys
from collections.abc import Callable, Sequence

from .script import NUMBERED_DEFAULT_TOKENS, Fault, numbered_script
from .server import OLLAMA_VERSION, OllamaSimulator

# Bounded logs for long benchmark runs; nobody reads them from the command line.
CLI_MAX_RECORDS = 1000
MAX_PORT = 65535


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
    parser.add_argument(
        "--nodes", type=int, default=1, help="simulators to start, on --port, --port+1, ..."
    )
    parser.add_argument(
        "--num-parallel",
        type=int,
        default=None,
        help="generations at once per node (OLLAMA_NUM_PARALLEL); default: no limit",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=0,
        help="generations waiting per node beyond --num-parallel before a 503 (OLLAMA_MAX_QUEUE)",
    )
    parser.add_argument("--models", default=None, help='models on every node, e.g. "qwen3:32b,x"')
    parser.add_argument(
        "--node-models", default=None, help='models per node, ";" between nodes: "a,b;c"'
    )
    parser.add_argument("--tls-cert", default=None, help="PEM certificate chain: serve HTTPS")
    parser.add_argument("--tls-key", default=None, help="PEM private key for --tls-cert")
    return parser.parse_args(argv)


def _model_lists(args: argparse.Namespace) -> list[list[str] | None]:
    """The models of each node (``None``: the defaults); ``ValueError`` for bad flags."""
    if args.node_models is not None:
        groups = [_names(group) for group in args.node_models.split(";")]
        if len(groups) != args.nodes:
            raise ValueError(
                f"--node-models names {len(groups)} node(s) but --nodes is {args.nodes}"
            )
        return list(groups)
    shared = _names(args.models) if args.models is not None else None
    return [shared] * args.nodes


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _check_args(args: argparse.Namespace) -> None:
    """Raise ``ValueError`` for flags that cannot work together."""
    if args.nodes < 1:
        raise ValueError("--nodes must be at least 1")
    if args.num_parallel is not None and args.num_parallel < 1:
        raise ValueError("--num-parallel must be at least 1")
    if args.max_queue < 0:
        raise ValueError("--max-queue must not be negative")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.port != 0 and args.port + args.nodes - 1 > MAX_PORT:
        raise ValueError(f"--port {args.port} leaves no room for {args.nodes} nodes")
    _model_lists(args)


def _server_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load --tls-cert/--tls-key: {exc.strerror or exc}") from None
    return context


async def _serve(args: argparse.Namespace, context: ssl.SSLContext | None) -> None:
    sims = [
        OllamaSimulator(
            host=args.host,
            port=args.port + index if args.port else 0,
            models=models,
            token_rate=args.rate if args.rate > 0 else None,
            first_token_delay=args.first_delay,
            script=numbered_script(args.tokens) if args.numbered else None,
            default_fault=Fault.parse(args.fault) if args.fault else None,
            max_records=CLI_MAX_RECORDS,
            num_parallel=args.num_parallel,
            max_queue=args.max_queue,
            ssl_context=context,
        )
        for index, models in enumerate(_model_lists(args))
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    started: list[OllamaSimulator] = []
    try:
        for sim in sims:
            await sim.start()
            started.append(sim)
        # Only once all listen: a reader that has N lines can use all N nodes.
        for sim in sims:
            print(f"ollama simulator listening on {sim.endpoint}", flush=True)
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        for sim in started:
            await sim.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parse_args(argv)
    try:
        Fault.parse(args.fault)
    except (TypeError, ValueError) as exc:
        print(f"bad --fault: {exc}", file=sys.stderr)
        return 2
    try:
        _check_args(args)
        context = _server_context(args)
    except ValueError as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 2
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if args.uvloop:
        import uvloop

        factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_serve(args, context))
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
