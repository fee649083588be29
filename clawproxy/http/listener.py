"""The listening side: sockets, the registry of open connections, the drain.

Theory of operation: one ``Listener`` serves every port of a gateway (public and admin),
so ``server.max_connections`` counts them together. It is the ``ConnectionHost`` each
public ``HttpConnection`` talks to: it admits or refuses a new connection, hands out h11
parsers built ahead (``ParserStock``), says whether the gateway is draining, and passes each
finished or refused request on to ``ListenerEvents`` (the gateway's metrics and access
log), so this layer knows nothing of either. A port opened with ``keep_open`` (the admin
port) has a host of its own, ``_KeptOpen``, over a separate set of connections: they are
admitted while draining and never waited for.

Shutting down is three steps, driven by the gateway: ``stop_accepting()`` closes the
public listening sockets and the idle public connections; ``drain()`` waits (bounded) for
running public requests to end, then ends what is left: streams with an in-band event, the
rest with a 503 or a close; ``close()``, at the very end, closes the ports kept open (so
``/health`` and ``/metrics`` can say ``draining`` all through the drain), ends their
connections and lets every socket finish closing. Admin connections never hold the drain:
they are idle keep-alives or quick requests, and a response during the drain closes its
connection.

A failed bind raises ``ListenError``, which names the listener by its configuration key, so
an operator knows which of the two ports to change.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Protocol

from clawproxy.config import ServerConfig
from clawproxy.http.parsers import ParserStock
from clawproxy.http.request import Request
from clawproxy.http.server import ConnectionHost, HttpConnection, Phase, Routes

# Pending connections the kernel queues per listening socket.
LISTEN_BACKLOG = 1024


def show_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets (``[::1]:8080``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ListenError(OSError):
    """A listener could not be opened: which one (its configuration key), where, and why."""

    def __init__(self, name: str, host: str, port: int, exc: OSError) -> None:
        reason = exc.strerror or str(exc)
        if exc.errno and exc.errno > 0 and not isinstance(exc, socket.gaierror):
            # uvloop's strerror repeats the address; the errno's own text does not.
            reason = os.strerror(exc.errno)
        super().__init__(exc.errno, reason)
        self.name = name
        self.host = host
        self.port = port
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot listen on {self.name} {show_address(self.host, self.port)}: {self.reason}"


class ListenerEvents(Protocol):
    """Where the listener reports what happened (the gateway's metrics and logs)."""

    def request_finished(self, request: Request) -> None: ...

    def request_refused(self, client: str, status: int, reason: str) -> None: ...

    def connections_changed(self, count: int) -> None: ...


class Listener:
    """Every listening socket and open connection of one gateway process; the host of the
    public connections (see the module doc)."""

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
        # The connections the drain waits for (the public port's).
        self._connections: set[HttpConnection] = set()
        self._servers: list[asyncio.Server] = []
        # The ports that stay open through the drain (admin) and their connections.
        self._kept = _KeptOpen(self)
        self._kept_servers: list[asyncio.Server] = []
        self._idle_drained = asyncio.Event()

    def __repr__(self) -> str:
        state = "draining" if self.draining else "serving"
        return (
            f"<Listener {state} connections={len(self._connections)}"
            f" kept_open={len(self._kept.connections)}>"
        )

    @property
    def open_connections(self) -> int:
        return len(self._connections) + len(self._kept.connections)

    def live(self) -> list[HttpConnection]:
        """The open connections, public and admin (for tests and diagnostics)."""
        return [*self._connections, *self._kept.connections]

    async def listen(
        self,
        router: Routes,
        host: str,
        port: int,
        *,
        name: str,
        keep_open: bool = False,
        reuse_port: bool = False,
    ) -> asyncio.Server:
        """Bind and serve ``router`` on ``host:port``. ``name`` is the listener's config key
        (in a ``ListenError``); ``keep_open``: stays open through the drain (admin);
        ``reuse_port``: shares the port with the other workers of one supervisor."""
        conn_host: ConnectionHost = self._kept if keep_open else self

        def factory() -> HttpConnection:
            return HttpConnection(conn_host, router)

        try:
            server = await self.loop.create_server(
                factory,
                host,
                port,
                reuse_address=True,
                reuse_port=reuse_port or None,
                backlog=LISTEN_BACKLOG,
            )
        except OSError as exc:
            raise ListenError(name, host, port, exc) from exc
        (self._kept_servers if keep_open else self._servers).append(server)
        return server

    # -- ConnectionHost (public connections) ------------------------------------------------

    def connection_opened(self, conn: HttpConnection) -> bool:
        if self.draining:
            self.events.request_refused(conn.client, 503, "too_many_connections")
            return False
        return self._admit(conn, self._connections)

    def connection_closed(self, conn: HttpConnection) -> None:
        self._release(conn, self._connections)
        self._idle_drained.set()

    def request_finished(self, request: Request) -> None:
        self.events.request_finished(request)
        if self.draining:
            self._idle_drained.set()

    def request_refused(self, client: str, status: int, reason: str) -> None:
        self.events.request_refused(client, status, reason)

    def _admit(self, conn: HttpConnection, group: set[HttpConnection]) -> bool:
        if self.open_connections >= self.config.max_connections:
            self.events.request_refused(conn.client, 503, "too_many_connections")
            return False
        group.add(conn)
        self.events.connections_changed(self.open_connections)
        return True

    def _release(self, conn: HttpConnection, group: set[HttpConnection]) -> None:
        group.discard(conn)
        self.events.connections_changed(self.open_connections)

    # -- shutting down ------------------------------------------------------------------------

    def stop_accepting(self) -> None:
        """Close the public listening sockets and every idle public connection; running
        requests go on, and the ports kept open (admin) still answer."""
        self.draining = True
        for server in self._servers:
            server.close()
        for conn in list(self._connections):
            if conn.phase is Phase.IDLE and conn.transport is not None:
                conn.transport.close()

    async def drain(self, timeout: float, stream_event: bytes) -> None:
        """Wait up to ``timeout`` for running public requests, then end the rest: a stream
        gets ``stream_event`` before its cut, the others a 503 or a close."""
        deadline = self.loop.time() + timeout
        while self._connections and self.loop.time() < deadline:
            self._idle_drained.clear()
            try:
                await asyncio.wait_for(self._idle_drained.wait(), deadline - self.loop.time())
            except TimeoutError:
                break
        await _end(self._connections, stream_event)

    async def close(self, stream_event: bytes) -> None:
        """The very end of a stop: close every listening socket, the admin port's last, end
        whatever connection is left, and wait for the sockets to close."""
        self.draining = True
        for server in (*self._servers, *self._kept_servers):
            server.close()
        await _end(self._connections, stream_event)
        await _end(self._kept.connections, stream_event)
        for server in (*self._servers, *self._kept_servers):
            await server.wait_closed()


async def _end(connections: set[HttpConnection], stream_event: bytes) -> None:
    """End every connection in ``connections`` now (see ``HttpConnection.interrupt``)."""
    for conn in list(connections):
        conn.interrupt(stream_event)
    if connections:
        # One loop pass for the interrupted handlers to write their last words.
        await asyncio.sleep(0)
    for conn in list(connections):
        if conn.transport is not None:
            conn.transport.abort()


class _KeptOpen:
    """The ``ConnectionHost`` of a port that stays open through the drain (admin): its
    connections count in ``max_connections`` with the public ones, are admitted while
    draining, and are never waited for."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self.config = listener.config
        self.loop = listener.loop
        self.parsers = listener.parsers
        self.connections: set[HttpConnection] = set()

    @property
    def draining(self) -> bool:
        return self._listener.draining

    def connection_opened(self, conn: HttpConnection) -> bool:
        return self._listener._admit(conn, self.connections)

    def connection_closed(self, conn: HttpConnection) -> None:
        self._listener._release(conn, self.connections)

    def request_finished(self, request: Request) -> None:
        self._listener.events.request_finished(request)

    def request_refused(self, client: str, status: int, reason: str) -> None:
        self._listener.events.request_refused(client, status, reason)
