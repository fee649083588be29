"""Keep-alive connections to one Ollama endpoint: the only owner of the pool's state.

Theory of operation
-------------------
``UpstreamPool.send()`` takes an idle keep-alive connection (most recently used first) or
opens one, writes one request (``UpstreamConnection.begin``) and returns the connection
once the response head has arrived. A caller that streams offers its ``ExchangeListener``
to ``send()``, which installs it inside the read that brings a 200 head; any other caller
reads the body with ``listen()`` or ``read_body()`` afterwards. Either way the caller ends
the exchange with ``release()`` (back here, if it ended cleanly), ``abort()``, or
``finish_in_background()`` once it has what it needs (back here at the body's end, which
may come later; until then the connection is open, not idle, and never handed out).

A reused connection that fails before any response byte arrived is retried once on a fresh
one: Ollama closed it while it sat idle, so the request started nothing. Nothing else is
ever retried. At most ``max_idle`` connections wait idle; one more is closed.

Building a pool asks nothing of Ollama: connections open on the first ``send()``.

With an ``ssl_context`` (an ``https://`` node, see ``clawproxy.ollama.tls``) every
connection is TLS from its first byte; the handshake happens inside ``connect_timeout``, and
a failed one (an untrusted certificate, a refused client certificate) is an
``UpstreamUnavailable`` that names the host and OpenSSL's reason. Nothing else changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import Callable

import h11

from clawproxy.errors import ConnectTimeout, UpstreamUnavailable
from clawproxy.net import parse_endpoint, parse_node_url
from clawproxy.ollama.connection import ConnState, ExchangeListener, UpstreamConnection

log = logging.getLogger("clawproxy.upstream")

# Distinct (method, target) pairs whose stand-in request is kept (there are a handful).
MAX_STAND_INS = 32


class UpstreamPool:
    """Keep-alive connections to one Ollama endpoint, owned by one event loop."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float,
        io_timeout: float,
        max_idle: int,
        loop: asyncio.AbstractEventLoop | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.loop = loop or asyncio.get_running_loop()
        self.connect_timeout = connect_timeout
        self.io_timeout = io_timeout
        self.max_idle = max_idle
        self._host_header = (f"[{host}]" if ":" in host else host).encode() + f":{port}".encode()
        self._idle: deque[UpstreamConnection] = deque()
        self._stand_ins: dict[tuple[bytes, bytes], h11.Request] = {}
        self._all: set[UpstreamConnection] = set()
        self.connects = 0  # connections opened (tests check reuse with it)

    @classmethod
    def for_endpoint(
        cls,
        endpoint: str,
        *,
        connect_timeout: float,
        io_timeout: float,
        max_idle: int,
        loop: asyncio.AbstractEventLoop,
        ssl_context: ssl.SSLContext | None = None,
    ) -> UpstreamPool:
        """A pool for a validated ``http://host:port`` endpoint (``model.endpoint``), or
        an ``https://`` one when ``ssl_context`` is given."""
        if ssl_context is None:
            host, port = parse_endpoint(endpoint)
        else:
            scheme, host, port = parse_node_url(endpoint)
            if scheme != "https":
                # A context for a plain-http URL is a caller's mistake, not a quiet no-op.
                raise ValueError(f"an ssl_context needs an https:// URL, not {endpoint!r}")
        return cls(
            host,
            port,
            connect_timeout=connect_timeout,
            io_timeout=io_timeout,
            max_idle=max_idle,
            loop=loop,
            ssl_context=ssl_context,
        )

    def __repr__(self) -> str:
        return (
            f"<UpstreamPool {self.host}:{self.port} open={len(self._all)} idle={len(self._idle)}>"
        )

    @property
    def open_connections(self) -> int:
        return len(self._all)

    @property
    def idle_connections(self) -> int:
        """Connections waiting for the next exchange (the rest of ``open_connections`` are
        carrying one, or finishing one in the background)."""
        return len(self._idle)

    async def send(
        self,
        method: bytes,
        target: bytes,
        body: bytes | None,
        meanwhile: Callable[[], None] | None = None,
        listener: ExchangeListener | None = None,
    ) -> UpstreamConnection:
        """Send one request and wait for the response head.

        ``meanwhile`` runs once, right after the request is written: set-up the caller needs
        only once the head is in, done while Ollama works instead of on the first token's
        path. ``listener`` is installed inside the read that brings a 200 head (``begin``).

        A reused keep-alive connection that fails before any response byte arrives is
        retried once on a fresh connection: Ollama closed it while idle, so the request
        never started a generation. Nothing else is ever retried.
        """
        conn = self._take_idle()
        if conn is not None:
            try:
                return await self._exchange(conn, method, target, body, meanwhile, listener)
            except UpstreamUnavailable:
                if conn.got_response_bytes:
                    raise
                log.debug("stale keep-alive connection to Ollama; retrying once")
                meanwhile = None
        conn = await self._connect()
        return await self._exchange(conn, method, target, body, meanwhile, listener)

    def put_idle(self, conn: UpstreamConnection) -> None:
        if len(self._idle) >= self.max_idle:
            conn.abort()
            return
        self._idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        self._all.discard(conn)
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)

    def close(self) -> None:
        for conn in list(self._all):
            conn.abort()
        self._idle.clear()

    def stand_in(self, method: bytes, target: bytes) -> h11.Request:
        """The request h11 is told about (see ``UpstreamConnection.begin``), built once."""
        key = (method, target)
        event = self._stand_ins.get(key)
        if event is None:
            headers = [(b"Host", self._host_header), (b"Content-Length", b"0")]
            event = h11.Request(method=method, target=target, headers=headers)
            if len(self._stand_ins) < MAX_STAND_INS:
                self._stand_ins[key] = event
        return event

    async def _exchange(
        self,
        conn: UpstreamConnection,
        method: bytes,
        target: bytes,
        body: bytes | None,
        meanwhile: Callable[[], None] | None,
        listener: ExchangeListener | None,
    ) -> UpstreamConnection:
        try:
            head = conn.begin(method, target, self._host_header, body, listener)
            if meanwhile is not None:
                meanwhile()
            await head
        except BaseException:
            conn.abort()
            raise
        return conn

    def _take_idle(self) -> UpstreamConnection | None:
        while self._idle:
            # Most recently used first: it is the least likely to have been closed by Ollama.
            conn = self._idle.pop()
            if conn.state is ConnState.IDLE and conn.transport and not conn.transport.is_closing():
                return conn
        return None

    async def _connect(self) -> UpstreamConnection:
        def factory() -> UpstreamConnection:
            return UpstreamConnection(self)

        where = f"{self.host}:{self.port}"
        tls = self.ssl_context
        try:
            async with asyncio.timeout(self.connect_timeout):
                if tls is None:
                    _, proto = await self.loop.create_connection(factory, self.host, self.port)
                else:
                    _, proto = await self.loop.create_connection(
                        factory, self.host, self.port, ssl=tls, server_hostname=self.host
                    )
        except TimeoutError:
            raise ConnectTimeout(
                f"could not connect to Ollama at {where} within {self.connect_timeout:g}s"
            ) from None
        except ssl.SSLError as exc:  # before OSError, its base class
            raise UpstreamUnavailable(
                f"TLS handshake with Ollama at {where} failed: {_tls_reason(exc)}"
            ) from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise UpstreamUnavailable(f"cannot connect to Ollama at {where}: {reason}") from None
        self.connects += 1
        self._all.add(proto)
        return proto


def _tls_reason(exc: ssl.SSLError) -> str:
    """``certificate verify failed: self-signed certificate``-style text for a failure."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    return str(exc.reason or exc.strerror or type(exc).__name__).replace("_", " ").lower()
