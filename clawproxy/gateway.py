"""The one place that builds a gateway process and wires its parts together.

Theory of operation: ``Gateway`` builds every collaborator once, from the configuration,
and hands each only what it uses: the HTTP listener gets the server limits and this
object as its ``ListenerEvents`` (metrics and the access log); the handlers get a
``Services`` (app layer); the catalog and model control get their pools, a clock and the
allow-list. No lower layer holds a reference to the gateway.

Nothing is asked of Ollama until a request needs it: building an ``UpstreamPool`` opens no
connection. ``start()``/``stop()`` bracket the gateway's life; ``stop()`` drains: it
closes the public listener (nginx moves on to another upstream), fails nothing that is
running, and waits up to ``server.drain_timeout`` for handlers to end. The admin listener
stays open until the very end of ``stop()``, so ``/health`` and ``/metrics`` can say
``draining`` while it lasts.

Every refused request (a limit, a deadline, bad framing, too many connections) gets an
access line too, through ``RefusalLog``, which bounds a flood's lines. At start, one warning
when per-address rate limits meet a trusted loopback (``forwarded_for_warning``).
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import TYPE_CHECKING

from clawproxy.app.admin import admin_router
from clawproxy.app.public import public_router
from clawproxy.app.services import Services
from clawproxy.config import Config, ConfigError, queue_timeout_s
from clawproxy.http.listener import Listener, ListenError
from clawproxy.http.request import Request
from clawproxy.nodes.models import ModelLoads
from clawproxy.nodes.node import Node
from clawproxy.nodes.prober import Prober
from clawproxy.nodes.table import NodeChangeError, NodeTable, node_specs
from clawproxy.ollama.pool import UpstreamPool
from clawproxy.openai.reframe import error_event
from clawproxy.policy.auth import KeyStore
from clawproxy.policy.clientaddr import TrustedProxies
from clawproxy.policy.guard import ClientGuard
from clawproxy.policy.ratelimit import RateLimiter
from clawproxy.telemetry.alerts import GpuAlerts
from clawproxy.telemetry.gpu import GpuSampler
from clawproxy.telemetry.logs import (
    RefusalLog,
    access_enabled,
    access_line,
    log_access,
    refusal_line,
)
from clawproxy.telemetry.remotegpu import RemoteGpus
from clawproxy.telemetry.state import LiveState

if TYPE_CHECKING:
    from clawproxy.coordination.backend import Coordination

log = logging.getLogger("clawproxy")

SHUTDOWN_EVENT = error_event("the gateway is shutting down; the reply was cut", "shutting_down")


class Gateway:
    """Everything one gateway process shares between its connections."""

    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        reuse_port: bool = False,
    ) -> None:
        self.config = config
        # Only a --workers worker shares its port (SO_REUSEPORT), with its supervisor's other
        # workers; a lone gateway never does, so a second one on the port fails to start.
        self.reuse_port = reuse_port
        self.loop = loop = loop or asyncio.get_running_loop()
        # The Ollama nodes (model.endpoint alone without ``nodes:``), their slots and queue;
        # no connection is opened before a request needs one.
        try:
            self.nodes = nodes = NodeTable(config, loop)
        except NodeChangeError as exc:
            raise ConfigError(str(exc)) from None
        routing = config.routing
        self.prober = Prober(
            nodes,
            loop,
            interval=routing.probe_interval,
            discovery_interval=routing.discovery_interval,
        )
        nodes.on_first_use = self.prober.start
        self.state = state = LiveState(
            config,
            loop.time(),
            nodes.scheduler,
            # /stats and the UI: every node, without its URL (the UI is on the public port).
            lambda: nodes.describe(with_url=False),
        )
        # Two connection budgets: the public port's and the admin port's own.
        self.connections = Listener(
            config.server, loop, self, kept_open_max=config.gateway.admin_max_connections
        )
        self.refusals = RefusalLog(loop)
        self.admin_port = 0
        # Who may use /v1 and how often (auth.*, gateway.rate_limit, server.trusted_proxies).
        self.keys = KeyStore.from_config(config.auth)
        self.limiter = RateLimiter.from_config(config.gateway.rate_limit, clock=loop.time)
        self.trusted = TrustedProxies(config.server.trusted_proxies)
        guard = ClientGuard(self.keys, self.limiter, self.trusted, state.refused)
        # Slots and rate limits shared with other instances through Redis, or none.
        self.coordination: Coordination | None = None
        if config.coordination.backend == "redis":
            # Imported here: six modules only a Redis fleet needs (and redis-py itself).
            from clawproxy.coordination.backend import Coordination

            try:
                self.coordination = Coordination(
                    config.coordination, config.gateway.rate_limit, nodes, guard, loop
                )
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            state.coordination = self.coordination
        # Hot loads across the nodes; they switch the default model held by the state.
        self.models = ModelLoads(nodes, state)
        # GPU telemetry with its alerts.
        alerts = GpuAlerts(config.alerts, state, loop)
        # ...and the node alerts: a node ejected from the pool, or back in it.
        nodes.scheduler.on_node_event = partial(node_event, nodes, alerts)
        self.gpu = GpuSampler(config.gpu, state, loop, alerts)
        # Each node's GPUs from its exporter page (nodes[].gpu_metrics_url), same cadence.
        self.remote_gpus = RemoteGpus(nodes.nodes, config.gpu.interval, state, alerts, loop)
        self.services = Services(
            config=config,
            loop=loop,
            state=state,
            guard=guard,
            nodes=nodes,
            models=self.models,
            connections=self.connections,
            queue_timeout=queue_timeout_s(config),
        )
        self.public = public_router(self.services)
        self.admin = admin_router(self.services)
        # Metric label for a path: the routed ones, else "other" (labels must stay bounded).
        self._endpoints = {path: path.decode("latin-1") for path in self.public.table}
        # A prefix route is one label ("/v1/models/{id}"), never one per id.
        self._prefix_endpoints = {
            prefix: prefix.decode("latin-1") + "{id}" for prefix, _ in self.public.prefixes
        }

    @property
    def draining(self) -> bool:
        return self.connections.draining

    @property
    def pool(self) -> UpstreamPool:
        """The first node's user-path pool (the only one without ``nodes:``)."""
        return self.nodes.first.pool

    def reload_nodes(self, config: Config) -> list[str]:
        """SIGHUP: make the node table match a reread ``nodes:`` list (changes the nodes
        only; other keys need a restart). Raises NodeChangeError, changing nothing."""
        changes = self.nodes.apply(node_specs(config))
        if changes:
            log.warning("nodes reloaded: %s", "; ".join(changes))
        return changes

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> int:
        """Listen on ``server.host:server.port`` and the admin port; return the public port.
        Raises ``ListenError`` naming the listener that failed."""
        cfg = self.config.server
        listener = self.connections
        server = await listener.listen(
            self.public, cfg.host, cfg.port, name="server.port", reuse_port=self.reuse_port
        )
        port: int = server.sockets[0].getsockname()[1]
        gw = self.config.gateway
        try:
            admin = await listener.listen(
                self.admin, gw.debug_host, gw.debug_port, name="gateway.debug_port", keep_open=True
            )
        except ListenError:
            await listener.close(SHUTDOWN_EVENT)  # the public port is not kept half-open
            raise
        self.admin_port = admin.sockets[0].getsockname()[1]
        log.info(
            "listening on http://%s:%d (upstream %s), admin on http://%s:%d",
            cfg.host,
            port,
            ", ".join(f"{n.name}={n.url}" for n in self.nodes.nodes()),
            gw.debug_host,
            self.admin_port,
        )
        if self.coordination is not None:
            await self.coordination.start()
        warning = forwarded_for_warning(self.limiter is not None, self.keys.enabled, self.trusted)
        if warning:
            log.warning("%s", warning)
        self.gpu.start()
        if self.config.gpu.enabled:
            self.remote_gpus.start()
        return port

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, let running requests finish (bounded), then close everything,
        the admin listener last."""
        self.connections.stop_accepting()
        # Queued requests would outlive the drain: refuse them now, while they can retry.
        self.state.admission.shed()
        timeout = self.config.server.drain_timeout if drain_timeout is None else drain_timeout
        # Past the deadline: streams end with an error event, the rest with a 503 or a close.
        await self.connections.drain(timeout, SHUTDOWN_EVENT)
        await self.prober.stop()
        if self.coordination is not None:
            await self.coordination.stop()
        self.nodes.close()
        await self.remote_gpus.stop()
        await self.gpu.stop()
        await self.connections.close(SHUTDOWN_EVENT)
        self.refusals.flush()

    # -- ListenerEvents -------------------------------------------------------------------------

    def connections_changed(self, count: int) -> None:
        self.state.connections = count

    def request_finished(self, request: Request) -> None:
        now = self.loop.time()
        if request.counted:
            endpoint = self._endpoints.get(request.path, "other")
            if request.path_rest:
                prefix = request.path[: len(request.path) - len(request.path_rest)]
                endpoint = self._prefix_endpoints.get(prefix, "other")
            self.state.record_request(request, endpoint, now)
        ttft = None if request.first_token_at is None else request.first_token_at - request.started
        if access_enabled():
            log_access(
                access_line(
                    request.client,
                    request.method,
                    request.path,
                    request.status,
                    request.model,
                    ttft,
                    now - request.started,
                    request.tokens,
                    request.outcome,
                    request.extra.get("key", "-"),
                    request.extra.get("node", "-"),
                    # Sane by construction (http.request): ASCII, nothing to escape.
                    request.request_id.decode("ascii") or "-",
                )
            )

    def request_refused(
        self, client: str, status: int, reason: str, method: bytes = b"", path: bytes = b""
    ) -> None:
        self.state.refused[reason] += 1
        # A refusal with a status got a reply: it is logged like a request. Status 0 is
        # counted only: a connection that never sent a request, or a client that stopped
        # reading (whose request gets its own line when it ends).
        if status and access_enabled():
            self.refusals.write(refusal_line(client, method, path, status, reason))


# The addresses a local tunnel or process connects from.
LOOPBACK_PEERS = ("127.0.0.1", "::1")


def forwarded_for_warning(
    rate_limited: bool, keys_enabled: bool, trusted: TrustedProxies
) -> str | None:
    """The start-up warning when a local tunnel can choose its rate-limit bucket: limits
    are on and per address (no API keys), and loopback may set X-Forwarded-For."""
    if not rate_limited or keys_enabled:
        return None
    loopback = [peer for peer in LOOPBACK_PEERS if trusted.contains(peer)]
    if not loopback:
        return None
    return (
        f"gateway.rate_limit counts per client address (no API keys) and "
        f"server.trusted_proxies trusts loopback ({', '.join(loopback)}): any local process "
        "or tunnel (ssh -L, socat) can choose its address, and so its bucket, with "
        "X-Forwarded-For; use API keys, or trust only nginx's address (README, Behind nginx)"
    )


def node_event(nodes: NodeTable, alerts: GpuAlerts, event: str, node: Node, reason: str) -> None:
    """A node ejected or back: its alert, and, for an ejection, the models it leaves with
    no healthy node."""
    alerts.node_event(event, node, reason)
    if event == "ejected":
        down = nodes.models_down(node)
        if down:
            alerts.models_down(down, node)
