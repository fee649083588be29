"""Command line: ``python -m clawproxy`` / ``clawproxy``.

Configuration comes from ``--config PATH`` (or ``CLAWPROXY_CONFIG``), with flags that
override the common keys. A bad configuration stops start-up with one line naming the key
and exit code 2. ``--demo`` starts the built-in Ollama simulator in the same process and
points the gateway at it, so a newcomer sees a reply stream with no Ollama installed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from clawproxy import __version__
from clawproxy.config.loading import Config, ConfigError, load_config
from clawproxy.gateway import Gateway
from clawproxy.process import signals
from clawproxy.telemetry.logs import setup_logging

log = logging.getLogger("clawproxy")

EXIT_CONFIG = 2


class HelpFormatter(argparse.HelpFormatter):
    """argparse's own, sized to the terminal without importing shutil: argparse builds a
    formatter for every add_argument(), and shutil (with bz2 and lzma) would stay loaded,
    half a MiB of the gateway's idle memory, for a help text it rarely prints."""

    def __init__(self, prog: str) -> None:
        try:
            columns = int(os.environ.get("COLUMNS", "")) or os.get_terminal_size().columns
        except (ValueError, OSError):
            columns = 80
        super().__init__(prog, width=max(columns, 40) - 2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clawproxy",
        description="OpenAI-compatible gateway in front of Ollama.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--config", metavar="PATH", help="YAML config (default: $CLAWPROXY_CONFIG)")
    parser.add_argument("--host", help="listen address (server.host)")
    parser.add_argument("--port", type=int, help="listen port (server.port; 0 picks a free one)")
    parser.add_argument("--upstream", metavar="URL", help="Ollama endpoint (model.endpoint)")
    parser.add_argument("--model", help="default model (model.name)")
    parser.add_argument("--log-level", help="debug, info, warning, error (logging.level)")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="run against the built-in Ollama simulator (no Ollama needed)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N gateway processes on the port (SO_REUSEPORT); limits are split (README)",
    )
    parser.add_argument("--version", action="version", version=f"clawproxy {__version__}")
    return parser


def overrides_from(args: argparse.Namespace) -> dict[str, object]:
    pairs = {
        "server.host": args.host,
        "server.port": args.port,
        "model.endpoint": args.upstream,
        "model.name": args.model,
        "logging.level": args.log_level,
    }
    return {key: value for key, value in pairs.items() if value is not None}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, overrides=overrides_from(args))
    except ConfigError as exc:
        print(f"clawproxy: config error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    try:
        setup_logging(config.logging)
    except OSError as exc:
        print(f"clawproxy: config error: logging.file: {exc.strerror}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    if args.workers != 1:
        from clawproxy.process.workers import supervise

        sys.exit(supervise(config, args.workers, demo=args.demo))
    run(serve(config, demo=args.demo))


def run(main_coro: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where it is installed, on stock asyncio otherwise."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main_coro)
        return
    uvloop.run(main_coro)


async def serve(
    config: Config,
    *,
    demo: bool = False,
    make_gateway: Callable[[Config], Gateway] = Gateway,
) -> None:
    simulator = None
    if demo:
        from clawproxy.simulator import OllamaSimulator

        simulator = OllamaSimulator()
        await simulator.start()
        config = dataclasses.replace(
            config, model=dataclasses.replace(config.model, endpoint=simulator.endpoint)
        )
    try:
        gateway = make_gateway(config)
    except ConfigError as exc:  # the API key file is read here
        print(f"clawproxy: config error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    try:
        port = await gateway.start()
    except OSError as exc:
        log.error(
            "cannot listen on %s:%s: %s", config.server.host, config.server.port, exc.strerror
        )
        if simulator is not None:
            await simulator.close()
        sys.exit(EXIT_CONFIG)
    settle_heap()
    if demo:
        print(demo_banner(port, config.model.name), file=sys.stderr, flush=True)
    stop = asyncio.Event()
    signals.install(gateway, stop)
    await stop.wait()
    log.info("shutting down: draining for up to %gs", config.server.drain_timeout)
    await gateway.stop()
    if simulator is not None:
        await simulator.close()


def settle_heap() -> None:
    """Start-up is over: collect its garbage once, then hide what survived (modules,
    configuration, routes: ~22,000 objects) from the cyclic collector for good.

    Python's full collections otherwise walk all of it every few thousand requests, a
    pause of 5 ms here on a warm CPU (more on a cold one) that every stream in flight
    waits out. Objects made later are collected as usual."""
    gc.collect()
    gc.freeze()


def demo_banner(port: int, model: str) -> str:
    base = f"http://127.0.0.1:{port}"
    return f"""
clawproxy demo: gateway on {base}, talking to the built-in Ollama simulator.
Try it in another terminal:

  curl -N {base}/v1/chat/completions -H 'Content-Type: application/json' -d '{{
    "model": "{model}", "stream": true,
    "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  python -c "import openai; c = openai.OpenAI(base_url='{base}/v1', api_key='none'); \\
[print(x.choices[0].delta.content or '', end='', flush=True) for x in \\
c.chat.completions.create(model='{model}', stream=True, \\
messages=[{{'role': 'user', 'content': 'Hello!'}}]) if x.choices]; print()"

Press Ctrl+C to stop.
"""
