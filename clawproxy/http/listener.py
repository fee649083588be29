"""The listening side: sockets, the registry of open connections, the drain.

Theory of operation: one ``Listener`` serves every port of a gateway (public and admin),
so ``server.max_connections`` counts them together. It is the ``ConnectionHost`` each
``HttpConnection`` talks to: it admits or refuses a new connection, hands out h11 parsers
built ahead (``ParserStock``), says whether the gateway is draining, and passes each
finished or refused request on to ``ListenerEvents`` (the gateway's metrics and access
log), so this layer knows nothing of either.

Shutting down is three steps, driven by the gateway: ``stop_accepting()`` closes the
listening sockets and the idle connections; ``drain()`` waits (bounded) for running
requests to end, then ends what is left: streams with an in-band event, the rest with a
503 or a close; ``wait_closed()`` lets the sockets finish closing.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from clawproxy.config import ServerConfig
from clawproxy.http.parsers import ParserStock
from clawproxy.http.request import Request
from clawproxy.http.server import HttpConnection, Phase, Routes

# Pending connections the kernel queues per listening socket.
LISTEN_BACKLOG = 1024


class ListenerEvents(Protocol):
    """Where the listener reports what happened (the gateway's metrics and logs)."""

    def request_finished(self, request: Request) -> None: ...

    def request_refused(self, client: str, status: int, reason: str) -> None: ...

    def connections_changed(self, count: int) -> None: ...


class Listener:
    """Every listening socket and open connection of one gateway process."""

    def __init__(
        self,
        config: ServerConfig,
        loop: asyncio.AbstractEventLoop,
        events: ListenerEvents,
    ) -> None:
        self.config = config
        self.loop = loop
        self.events = events
        self.draining = False
        # Parsers for new connections, built between requests (ParserStock).
        self.parsers = ParserStock(config.max_header_bytes)
        self._connections: set[HttpConnection] = set()
        self._servers: list[asyncio.Server] = []
        self._idle_drained = asyncio.Event()

    def __repr__(self) -> str:
        state = "draining" if self.draining else "serving"
        return f"<Listener {state} connections={len(self._connections)}>"

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def live(self) -> list[HttpConnection]:
        """The open connections, public and admin (for tests and diagnostics)."""
        return list(self._connections)

    async def listen(
        self, router: Routes, host: str, port: int, *, reuse_port: bool = False
    ) -> asyncio.Server:
        """Serve ``router`` on ``host:port``; ``reuse_port`` shares the port (--workers)."""

        def factory() -> HttpConnection:
            return HttpConnection(self, router)

        server = await self.loop.create_server(
            factory,
            host,
            port,
            reuse_address=True,
            reuse_port=reuse_port or None,
            backlog=LISTEN_BACKLOG,
        )
        self._servers.append(server)
        return server

    # -- ConnectionHost ---------------------------------------------------------------------

    def connection_opened(self, conn: HttpConnection) -> bool:
        if self.draining or len(self._connections) >= self.config.max_connections:
            self.events.request_refused(conn.client, 503, "too_many_connections")
            return False
        self._connections.add(conn)
        self.events.connections_changed(len(self._connections))
        return True

    def connection_closed(self, conn: HttpConnection) -> None:
        self._connections.discard(conn)
        self.events.connections_changed(len(self._connections))
        self._idle_drained.set()

    def request_finished(self, request: Request) -> None:
        self.events.request_finished(request)
        if self.draining:
            self._idle_drained.set()

    def request_refused(self, client: str, status: int, reason: str) -> None:
        self.events.request_refused(client, status, reason)

    # -- shutting down ------------------------------------------------------------------------

    def stop_accepting(self) -> None:
        """Close the listening sockets and every idle connection; running requests go on."""
        self.draining = True
        for server in self._servers:
            server.close()
        for conn in list(self._connections):
            if conn.phase is Phase.IDLE and conn.transport is not None:
                conn.transport.close()

    async def drain(self, timeout: float, stream_event: bytes) -> None:
        """Wait up to ``timeout`` for running requests, then end the rest: a stream gets
        ``stream_event`` before its cut, the others a 503 or a close."""
        deadline = self.loop.time() + timeout
        while self._connections and self.loop.time() < deadline:
            self._idle_drained.clear()
            try:
                await asyncio.wait_for(self._idle_drained.wait(), deadline - self.loop.time())
            except TimeoutError:
                break
        for conn in list(self._connections):
            conn.interrupt(stream_event)
        if self._connections:
            await asyncio.sleep(0)
        for conn in list(self._connections):
            if conn.transport is not None:
                conn.transport.abort()

    async def wait_closed(self) -> None:
        for server in self._servers:
            await server.wait_closed()
