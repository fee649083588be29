"""Running one gateway process: the event loop, start-up, signals, the drain.

``serve()`` is one gateway's whole life on a running loop: the optional demo simulators,
``server.max_connections`` fitted to the open-file limit (``fds``), start (exit 2 when a
port cannot be had, with one line that names the listener by its key and the flag that
changes it), the start-up heap settled, signals installed, then wait for a stop and drain.
``run()`` runs it on uvloop where installed. The command line (``cli``) and each
pre-forked worker (``workers``) both come here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import gc
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from clawproxy.config import Config, ConfigError, NodeConfig, NodeTlsConfig
from clawproxy.gateway import Gateway
from clawproxy.http.listener import ListenError, show_address
from clawproxy.process import signals
from clawproxy.process.fds import fit_open_files

if TYPE_CHECKING:
    from clawproxy.simulator import OllamaSimulator

log = logging.getLogger("clawproxy")

EXIT_CONFIG = 2

# The flag that sets each listener's port, for the line that says a port cannot be had.
PORT_FLAGS = {"server.port": "--port", "gateway.debug_port": "--debug-port"}
# What is most likely on a port already in use, per listener.
IN_USE = {
    "server.port": "another gateway or program serves this port; only the workers of one "
    "clawproxy may share it",
    "gateway.debug_port": "another gateway's admin port?",
}


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
    reread: signals.Reread | None = None,
) -> None:
    simulators: list[OllamaSimulator] = []
    if demo:
        simulators, config = await demo_nodes(config)
    try:
        # max_connections within the open-file limit (raised as far as needed, else clamped).
        config = fit_open_files(config)
        gateway = make_gateway(config)
    except ConfigError as exc:  # the API key file is read here
        print(f"clawproxy: config error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    try:
        port = await gateway.start()
    except ListenError as exc:
        report(listen_failure(exc))
        for simulator in simulators:
            await simulator.close()
        sys.exit(EXIT_CONFIG)
    settle_heap()
    if demo:
        admin = f"http://{show_address(config.gateway.debug_host, gateway.admin_port)}"
        print(demo_banner(port, config.model.name, admin), file=sys.stderr, flush=True)
    stop = asyncio.Event()
    # The demo's nodes are its simulators: a reread file would point them elsewhere.
    signals.install(gateway, stop, None if demo else reread)
    await stop.wait()
    log.info("shutting down: draining for up to %gs", config.server.drain_timeout)
    await gateway.stop()
    for simulator in simulators:
        await simulator.close()


# --demo's simulated nodes, so the UI's nodes table has rows to show.
DEMO_NODES = ("sim-a", "sim-b")


async def demo_nodes(config: Config) -> tuple[list[OllamaSimulator], Config]:
    """Start the demo's simulators: two nodes (``DEMO_NODES``), or one per configured node
    name when the config has ``nodes:`` (their URLs replaced by the simulators')."""
    from clawproxy.simulator import OllamaSimulator

    names = [node.name for node in config.nodes] or list(DEMO_NODES)
    simulators = [OllamaSimulator() for _ in names]
    for simulator in simulators:
        await simulator.start()
    specs = config.nodes or tuple(NodeConfig(name=name) for name in names)
    nodes = tuple(
        dataclasses.replace(spec, url=sim.endpoint, tls=NodeTlsConfig())
        for spec, sim in zip(specs, simulators, strict=True)
    )
    model = dataclasses.replace(config.model, endpoint=simulators[0].endpoint)
    return simulators, dataclasses.replace(config, model=model, nodes=nodes)


def listen_failure(exc: ListenError) -> str:
    """One line: the listener by its key, the address, why, and how to choose another."""
    hint = f" ({IN_USE[exc.name]})" if exc.errno == errno.EADDRINUSE and exc.name in IN_USE else ""
    flag = PORT_FLAGS.get(exc.name)
    way_out = f"; set another with {flag} PORT or {exc.name} (0: any free port)" if flag else ""
    return f"{exc}{hint}{way_out}"


def report(message: str) -> None:
    """A start-up failure: one line on stderr, where the operator is looking, and in the
    log file too when there is one."""
    print(f"clawproxy: {message}", file=sys.stderr, flush=True)
    if any(isinstance(h, logging.FileHandler) for h in logging.getLogger("clawproxy").handlers):
        log.error("%s", message)


def settle_heap() -> None:
    """Start-up is over: collect its garbage once, then hide what survived (modules,
    configuration, routes: ~22,000 objects) from the cyclic collector for good.

    Python's full collections otherwise walk all of it every few thousand requests, a
    pause of 5 ms here on a warm CPU (more on a cold one) that every stream in flight
    waits out. Objects made later are collected as usual."""
    gc.collect()
    gc.freeze()


def demo_banner(port: int, model: str, admin: str) -> str:
    base = f"http://127.0.0.1:{port}"
    return f"""
clawproxy demo: gateway on {base}, talking to the built-in Ollama simulator.
Its admin (health, metrics, stats): {admin}/health
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
