"""The gateway process: listener, routes, the lazy upstream pool and the live state.

Theory of operation: ``Gateway`` is the one context object every connection holds. It owns
the listening socket, the route table, the ``LiveState`` counters and the upstream pool.
The pool is created on first use, so nothing is asked of Ollama until a request needs it.
``serve()``/``stop()`` bracket its life; ``stop()`` drains: it closes the listener, fails
nothing that is running, and waits up to ``server.drain_timeout`` for handlers to end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from clawproxy.app.admin import ADMIN
from clawproxy.app.public import Router, public_router
from clawproxy.config.loading import Config, queue_timeout_s
from clawproxy.http.server import HttpConnection, ParserStock, Phase, Request
from clawproxy.ollama.catalog import ModelCatalog
from clawproxy.ollama.modelctl import ModelControl
from clawproxy.ollama.upstream import UpstreamPool
from clawproxy.openai.reframe import error_event
from clawproxy.policy.auth import KeyStore
from clawproxy.policy.clientaddr import TrustedProxies
from clawproxy.policy.ratelimit import RateLimiter
from clawproxy.telemetry.alerts import GpuAlerts
from clawproxy.telemetry.gpu import GpuSampler
from clawproxy.telemetry.logs import access_enabled, access_line, log_access
from clawproxy.telemetry.state import LiveState
from clawproxy.units import parse_endpoint

log = logging.getLogger("clawproxy")

SHUTDOWN_EVENT = error_event("the gateway is shutting down; the reply was cut", "shutting_down")

Handler = Callable[["Gateway", Request, HttpConnection], Awaitable[None]]


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
        # With --workers, every worker's public listener shares the port (SO_REUSEPORT).
        self.reuse_port = reuse_port
        self.loop = loop or asyncio.get_running_loop()
        self.state = LiveState(config, self.loop.time())
        self.draining = False
        self._pool: UpstreamPool | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[HttpConnection] = set()
        self._idle_drained = asyncio.Event()
        self._admin_server: asyncio.Server | None = None
        self.admin_port = 0
        # Who may use /v1 and how often (auth.*, gateway.rate_limit, server.trusted_proxies).
        self.keys = KeyStore.from_config(config.auth)
        self.limiter = RateLimiter.from_config(config.gateway.rate_limit, clock=self.loop.time)
        self.trusted = TrustedProxies(config.server.trusted_proxies)
        self.catalog = ModelCatalog(self)
        # Admin-side Ollama calls (hot load, details) and GPU telemetry with its alerts.
        self.models = ModelControl(self)
        alerts = GpuAlerts(config.alerts, self.state, self.loop)
        self.gpu = GpuSampler(config.gpu, self.state, self.loop, alerts)
        # Metric label for a path: the routed ones, else "other" (labels must stay bounded).
        self.public = public_router(config)
        self._endpoints = {path: path.decode("latin-1") for path in self.public.table}
        # Parsers for new connections, built between requests (server.ParserStock).
        self.parsers = ParserStock(config.server.max_header_bytes)
        # How long a request may wait in the admission queue (read on every request).
        self.queue_timeout = queue_timeout_s(config)

    @property
    def pool(self) -> UpstreamPool:
        """The upstream pool, created on first use (the gateway is lazy towards Ollama)."""
        if self._pool is None:
            host, port = parse_endpoint(self.config.model.endpoint)
            up = self.config.upstream
            self._pool = UpstreamPool(
                host,
                port,
                connect_timeout=up.connect_timeout,
                io_timeout=self.config.server.timeout,
                max_idle=up.pool_size,
                loop=self.loop,
            )
        return self._pool

    @property
    def pool_if_started(self) -> UpstreamPool | None:
        return self._pool

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> int:
        """Listen on ``server.host:server.port`` and the admin port; return the public port."""
        cfg = self.config.server
        self._server = await self._listen(self.public, cfg.host, cfg.port)
        port: int = self._server.sockets[0].getsockname()[1]
        gw = self.config.gateway
        self._admin_server = await self._listen(ADMIN, gw.debug_host, gw.debug_port)
        self.admin_port = self._admin_server.sockets[0].getsockname()[1]
        log.info(
            "listening on http://%s:%d (upstream %s), admin on http://%s:%d",
            cfg.host,
            port,
            self.config.model.endpoint,
            gw.debug_host,
            self.admin_port,
        )
        self.gpu.start()
        return port

    async def _listen(self, router: Router, host: str, port: int) -> asyncio.Server:
        def factory() -> HttpConnection:
            return HttpConnection(self, router)

        shared = self.reuse_port and router is self.public
        return await self.loop.create_server(
            factory, host, port, reuse_address=True, reuse_port=shared or None, backlog=1024
        )

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, let running requests finish (bounded), then close everything."""
        self.draining = True
        for server in (self._server, self._admin_server):
            if server is not None:
                server.close()
        timeout = self.config.server.drain_timeout if drain_timeout is None else drain_timeout
        for conn in list(self._connections):
            if conn.phase is Phase.IDLE and conn.transport is not None:
                conn.transport.close()
        # Queued requests would outlive the drain: refuse them now, while they can retry.
        self.state.admission.shed()
        deadline = self.loop.time() + timeout
        while self._connections and self.loop.time() < deadline:
            self._idle_drained.clear()
            try:
                await asyncio.wait_for(self._idle_drained.wait(), deadline - self.loop.time())
            except TimeoutError:
                break
        # Past the deadline: streams end with an error event, the rest with a 503 or a close.
        for conn in list(self._connections):
            conn.interrupt(SHUTDOWN_EVENT)
        if self._connections:
            await asyncio.sleep(0)
        for conn in list(self._connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self._pool is not None:
            self._pool.close()
        self.models.close()
        await self.gpu.stop()
        for server in (self._server, self._admin_server):
            if server is not None:
                await server.wait_closed()

    # -- called by connections ------------------------------------------------------------------

    def connection_opened(self, conn: HttpConnection) -> bool:
        if self.draining or len(self._connections) >= self.config.server.max_connections:
            self.state.refused["too_many_connections"] += 1
            return False
        self._connections.add(conn)
        self.state.connections = len(self._connections)
        return True

    def connection_closed(self, conn: HttpConnection) -> None:
        self._connections.discard(conn)
        self.state.connections = len(self._connections)
        self._idle_drained.set()

    def request_finished(self, request: Request) -> None:
        now = self.loop.time()
        if request.counted:
            endpoint = self._endpoints.get(request.path, "other")
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
                )
            )
        if self.draining:
            self._idle_drained.set()

    def request_refused(self, client: str, status: int, reason: str) -> None:
        self.state.refused[reason] += 1
        log.debug("refused %s: %s (%s)", client, reason, status or "closed")
