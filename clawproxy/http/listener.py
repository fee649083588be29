"""The listening side: sockets, the registry of open connections, the drain.

Theory of operation: one ``Listener`` serves every port of a gateway (public and admin).
It is the ``ConnectionHost`` each public ``HttpConnection`` talks to: it admits or refuses a
new connection, hands out h11 parsers built ahead (``ParserStock``), says whether the
gateway is draining, and passes each finished or refused request on to ``ListenerEvents``
(the gateway's metrics and access log), so this layer knows nothing of either. A port
opened with ``keep_open`` (the admin port) has a host of its own, ``_KeptOpen``, over a
separate set of connections: they are admitted while draining and never waited for.

Two connection budgets: the public connections count against ``server.max_connections``,
the kept-open ones against a small budget of their own (``kept_open_max``, the gateway's
``gateway.admin_max_connections``). A flood of idle sockets on the public port therefore
never takes the connection an operator's ``/health`` needs, and a flood on the admin port
never takes a user's. Past its budget a connection gets a 503 and is closed
(``too_many_connections``, ``too_many_admin_connections``).

An ``accept()`` that fails because the process is out of file descriptors is logged
(``_AcceptWatch``, rate-limited), where the event loop reports it at all: see there.

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
import errno
import logging
import os
import socket
from collections.abc import Callable
from typing import Any, Protocol

from clawproxy.config import ServerConfig
from clawproxy.http.parsers import ParserStock
from clawproxy.http.request import Request
from clawproxy.http.server import ConnectionHost, HttpConnection, Phase, Routes

log = logging.getLogger("clawproxy.listener")

# Pending connections the kernel queues per listening socket.
LISTEN_BACKLOG = 1024
# The kept-open (admin) port's connection budget when none is given: the default of
# gateway.admin_max_connections (an operator, a scraper or two, a health check).
KEPT_OPEN_MAX_CONNECTIONS = 16
# accept() fails with these when the process (EMFILE) or the system (ENFILE) has no file
# descriptor left.
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})
# At most one log line this often about failing accept()s (stock asyncio retries each second).
ACCEPT_FAILURE_LOG_INTERVAL_S = 10.0

ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


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

    def request_refused(
        self, client: str, status: int, reason: str, method: bytes = b"", path: bytes = b""
    ) -> None: ...

    def connections_changed(self, count: int) -> None: ...


class Listener:
    """Every listening socket and open connection of one gateway process; the host of the
    public connections (see the module doc)."""

    def __init__(
        self,
        config: ServerConfig,
        loop: asyncio.AbstractEventLoop,
        events: ListenerEvents,
        *,
        kept_open_max: int = KEPT_OPEN_MAX_CONNECTIONS,
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
        self._kept = _KeptOpen(self, kept_open_max)
        self._kept_servers: list[asyncio.Server] = []
        self._idle_drained = asyncio.Event()
        self._accepts = _AcceptWatch(loop)

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
        self._accepts.watch(server, name)
        return server

    # -- ConnectionHost (public connections) ------------------------------------------------

    def connection_opened(self, conn: HttpConnection) -> bool:
        if self.draining:
            self.events.request_refused(conn.client, 503, "too_many_connections")
            return False
        return self._admit(
            conn, self._connections, self.config.max_connections, "too_many_connections"
        )

    def connection_closed(self, conn: HttpConnection) -> None:
        self._release(conn, self._connections)
        self._idle_drained.set()

    def request_finished(self, request: Request) -> None:
        self.events.request_finished(request)
        if self.draining:
            self._idle_drained.set()

    def request_refused(
        self, client: str, status: int, reason: str, method: bytes = b"", path: bytes = b""
    ) -> None:
        self.events.request_refused(client, status, reason, method, path)

    def _admit(
        self, conn: HttpConnection, group: set[HttpConnection], budget: int, refusal: str
    ) -> bool:
        """Admit ``conn`` into ``group`` unless the group holds ``budget`` connections."""
        if self._accepts.failing:
            self._accepts.recovered()
        if len(group) >= budget:
            self.events.request_refused(conn.client, 503, refusal)
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
        self._accepts.close()


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
    connections count against a budget of their own (``budget``), never the public one,
    are admitted while draining, and are never waited for."""

    def __init__(self, listener: Listener, budget: int) -> None:
        self._listener = listener
        self.config = listener.config
        self.loop = listener.loop
        self.parsers = listener.parsers
        self.budget = budget
        self.connections: set[HttpConnection] = set()

    @property
    def draining(self) -> bool:
        return self._listener.draining

    def connection_opened(self, conn: HttpConnection) -> bool:
        return self._listener._admit(
            conn, self.connections, self.budget, "too_many_admin_connections"
        )

    def connection_closed(self, conn: HttpConnection) -> None:
        self._listener._release(conn, self.connections)

    def request_finished(self, request: Request) -> None:
        self._listener.events.request_finished(request)

    def request_refused(
        self, client: str, status: int, reason: str, method: bytes = b"", path: bytes = b""
    ) -> None:
        self._listener.events.request_refused(client, status, reason, method, path)


class _AcceptWatch:
    """Failed ``accept()``s on our listening sockets for want of file descriptors, logged at
    most once per ``ACCEPT_FAILURE_LOG_INTERVAL_S``, and the recovery once a connection
    is accepted again.

    Stock asyncio reports such a failure to the loop's exception handler (a public hook;
    its context names the ``socket``), stops accepting on that socket and tries again a
    second later, so waiting clients stay in the kernel's queue. uvloop never reports it:
    libuv keeps one spare descriptor, and when accept() fails it closes the spare, accepts
    and closes every waiting connection (the clients see an empty reply) and reopens it,
    telling Python nothing. There, the start-up budget (``process.fds``: max_connections
    fits the open-file limit) is what keeps client connections from ever getting there.
    Other exception-handler calls go on to the handler that was there before."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # Listening socket descriptor -> the listener's configuration key.
        self._names: dict[int, str] = {}
        self._previous: ExceptionHandler | None = None
        self._installed = False
        # Whether accept() has failed since the last connection was accepted, and since when.
        self.failing = False
        self._since = 0.0
        # When accept() last failed (loop time): stock asyncio retries each failure a
        # second later (its ACCEPT_RETRY_DELAY), so none is pending a second after this.
        self.last_failed_at = float("-inf")
        self._told_at = float("-inf")

    def watch(self, server: asyncio.AbstractServer, name: str) -> None:
        """Tell failed accept()s on ``server``'s sockets as failures of listener ``name``."""
        for sock in getattr(server, "sockets", ()):
            self._names[sock.fileno()] = name
        if not self._installed:
            self._previous = self.loop.get_exception_handler()
            self.loop.set_exception_handler(self._handle)
            self._installed = True

    def close(self) -> None:
        """Give the loop back the exception handler it had (unless another replaced ours)."""
        if self._installed and self.loop.get_exception_handler() == self._handle:
            self.loop.set_exception_handler(self._previous)
        self._installed = False

    def _handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        sock = context.get("socket")
        if (
            isinstance(exc, OSError)
            and exc.errno in OUT_OF_DESCRIPTORS
            and sock is not None
            and sock.fileno() in self._names
        ):
            self._accept_failed(self._names[sock.fileno()], exc.errno)
        elif self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)

    def _accept_failed(self, name: str, code: int) -> None:
        # No count in the line: stock asyncio tries accept() up to the backlog's length per
        # wake-up and reports every failure, so a count would say little.
        now = self.loop.time()
        self.last_failed_at = now
        if not self.failing:
            self.failing = True
            self._since = now
        if now - self._told_at < ACCEPT_FAILURE_LOG_INTERVAL_S:
            return
        self._told_at = now
        log.error(
            "cannot accept connections on %s: out of file descriptors (%s); new clients "
            "wait until some close; raise the open-file limit (LimitNOFILE=, ulimit -n) or "
            "lower server.max_connections",
            name,
            errno.errorcode.get(code, code),
        )

    def recovered(self) -> None:
        """A connection was accepted after failures: say the outage is over."""
        self.failing = False
        log.warning(
            "accepting connections again after %.1fs out of file descriptors",
            self.loop.time() - self._since,
        )
