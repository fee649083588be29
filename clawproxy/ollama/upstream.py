"""The upstream client: HTTP/1.1 to Ollama over asyncio, h11 parsing, a keep-alive pool.

Theory of operation
-------------------
``UpstreamPool.send()`` takes an idle keep-alive connection (or opens one), writes one
request, and returns the ``UpstreamConnection`` once the response head has arrived. The
caller then either reads the whole (bounded) body with ``read_body()``, or installs a body
sink with ``stream_body()``: from then on every upstream read is decoded (h11 for heads
and unchunked bodies, ``ChunkedDecoder`` for Ollama's chunked streams) and handed to the
sink synchronously inside ``data_received``, joined into one bytes object, so the gateway
does one client write per upstream read and no task switch per token. A streaming caller
installs its sink in ``send()``'s ``on_head`` hook, which runs inside the read that brings
a 200 head: what came with the head (usually the first token) is relayed in that same
callback instead of a loop pass later, when the caller's task wakes.

h11 frames a response only after it was "sent" the request: it is told about a stand-in
with the same method and target (``_tell_h11``), and for the next exchange already when a
connection goes idle, so that work is off the next request's way to Ollama.

A connection goes ``CONNECTING -> ACTIVE -> IDLE -> ACTIVE ... -> CLOSED``. It returns to
the pool only when both h11 sides reached ``DONE`` and the caller called ``release()``;
anything else (an abandoned response, a timeout, a protocol error, bytes after the end)
closes it, because a half-read Ollama response would corrupt the next exchange and an open
socket keeps Ollama generating for nobody.

Deadlines: one watchdog timer per exchange. ``io_timeout`` (``server.timeout``) bounds the
wait for the response head and any silence between body reads; a healthy long stream is
never cut, because every read moves the deadline. Time spent paused by our own
backpressure does not count as upstream silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import deque
from collections.abc import Callable
from typing import cast

import h11

from clawproxy.errors import GatewayError, UpstreamFailed, UpstreamTimeout, UpstreamUnavailable
from clawproxy.http.chunked import ChunkedDecoder, ChunkedError
from clawproxy.http.heads import is_chunked

log = logging.getLogger("clawproxy.upstream")

# h11's default cap on an incomplete response head; Ollama's heads are a few hundred bytes.
MAX_RESPONSE_HEAD_BYTES = 64 * 1024
USER_AGENT = b"clawproxy"
# Distinct (method, target) pairs whose stand-in request is kept (there are a handful).
MAX_STAND_INS = 32

BodySink = Callable[[bytes], None]
# Called with the connection inside the read that completed a 200 head (see ``begin``).
HeadHook = Callable[["UpstreamConnection"], None]
# Offered a raw chunked read at a chunk boundary; True when it consumed the whole read.
RawSink = Callable[[bytes], bool]
END_OF_MESSAGE = h11.EndOfMessage()


class ConnState(enum.Enum):
    CONNECTING = "connecting"
    ACTIVE = "active"
    IDLE = "idle"
    CLOSED = "closed"


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to Ollama, carrying one exchange at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self._h11 = self._new_parser()
        self.transport: asyncio.Transport | None = None
        self.state = ConnState.CONNECTING
        self.reused = False
        self.status = 0
        # Set when any response byte arrived for the current exchange: a retry is then unsafe.
        self.got_response_bytes = False
        self.complete = False
        self._head: asyncio.Future[None] | None = None
        self._done: asyncio.Future[None] | None = None
        self._sink: BodySink | None = None
        self._raw_sink: RawSink | None = None
        self._early: list[bytes] = []
        self._head_hook: HeadHook | None = None
        self._chunks: ChunkedDecoder | None = None
        # The exchange h11 was last told about, and whether it was told already (primed).
        self._exchange_key: tuple[bytes, bytes] = (b"", b"")
        self._primed = False
        self._paused = False
        self._timeout = pool.io_timeout
        self._last_rx = 0.0
        self._watchdog: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<UpstreamConnection {self.state.value} reused={self.reused} status={self.status}>"

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but implement it.
        # No TCP_NODELAY here: asyncio and uvloop both set it on every TCP transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.state is not ConnState.ACTIVE:
            # Bytes on an idle keep-alive connection: the server is confused; drop it.
            self._close()
            return
        self._last_rx = self._loop.time()
        chunks = self._chunks
        if chunks is not None:
            # The hot path: a chunked body, decoded without h11's event machinery. A read
            # that starts at a chunk boundary is first offered undecoded to the raw sink
            # (the one-token read: see SseReframer.feed_chunk); what it declines is decoded.
            raw_sink = self._raw_sink
            if raw_sink is not None and chunks.at_boundary:
                try:
                    if raw_sink(data):
                        return
                except Exception as exc:  # any failure is the sink's: _sink_raised
                    self._sink_raised(exc)
                    return
            try:
                payload = chunks.feed(data)
            except ChunkedError as exc:
                self._fail(UpstreamUnavailable(f"Ollama sent a malformed chunked body ({exc})"))
                return
            if payload:
                self._deliver(payload)
            if chunks.done and not self.complete:
                self.complete = True
                self._finish_exchange()
            return
        self.got_response_bytes = True
        self._receive_with_h11(data)

    def _receive_with_h11(self, data: bytes) -> None:
        """The response head, and bodies that are not chunked (errors, model lists)."""
        conn = self._h11
        parts: list[bytes] = []
        try:
            conn.receive_data(data)
            while True:
                event = conn.next_event()
                kind = type(event)
                if kind is h11.Data:
                    parts.append(event.data)  # type: ignore[union-attr]
                elif event is h11.NEED_DATA:
                    break
                elif kind is h11.Response:
                    self._on_head(event)  # type: ignore[arg-type]
                    if self._chunks is not None:
                        # Hand the rest of this read to the chunked decoder.
                        rest, _ = conn.trailing_data
                        if rest:
                            self.data_received(rest)
                        return
                elif kind is h11.EndOfMessage:
                    self.complete = True
                    break
                elif kind is h11.InformationalResponse:
                    continue
                else:  # ConnectionClosed or PAUSED: the body ended without its terminator
                    break
        except h11.RemoteProtocolError as exc:
            self._fail(UpstreamUnavailable(f"Ollama sent an invalid HTTP response ({exc})"))
            return
        if parts:
            self._deliver(parts[0] if len(parts) == 1 else b"".join(parts))
        if self.complete:
            self._finish_exchange()

    def eof_received(self) -> bool | None:
        # Let the transport close; connection_lost reports what was missing.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        was_active = self.state is ConnState.ACTIVE
        self.state = ConnState.CLOSED
        self._cancel_watchdog()
        self._pool.forget(self)
        if was_active and not self.complete:
            # h11 turns a close into a clean end only for EOF-delimited bodies; Ollama never
            # sends those, so any close before the end of the body is a cut response.
            if self._chunks is None:
                self._end_by_close()
            if not self.complete:
                what = "reset" if exc else "closed"
                self._fail(UpstreamUnavailable(f"Ollama {what} the connection mid-response"))

    def _end_by_close(self) -> None:
        """An EOF-delimited body (not Ollama's style, but legal HTTP) ends at the close."""
        try:
            self._h11.receive_data(b"")
            event = self._h11.next_event()
            if type(event) is h11.EndOfMessage:
                self.complete = True
                self._finish_exchange()
        except h11.RemoteProtocolError:
            pass

    # -- exchange ---------------------------------------------------------------------------

    def begin(
        self,
        method: bytes,
        target: bytes,
        host: bytes,
        body: bytes | None,
        on_head: HeadHook | None = None,
    ) -> asyncio.Future[None]:
        """Write one request; the future it returns resolves with the response head.

        ``on_head``, if given, runs inside the read that completes a 200 head, before the
        rest of that read is handled: a caller that installs its body sink there relays
        the bytes that came with the head at once, not a loop pass later when its task
        wakes (the first token on a stream usually shares Ollama's first write).
        """
        assert self.transport is not None
        self.state = ConnState.ACTIVE
        self.status = 0
        self.got_response_bytes = False
        self.complete = False
        self._sink = None
        self._raw_sink = None
        self._early = []
        self._head_hook = on_head
        self._chunks = None
        self._head = head = self._loop.create_future()
        self._done = self._loop.create_future()
        # h11 parses the response only after it has "sent" a request: it is given a
        # validated stand-in with the same method and target (all it frames a response
        # by), while the bytes on the wire are rendered here, as the server renders its
        # responses. Building and validating the real request in h11 cost more than
        # everything else this method does. Written first: what follows runs while Ollama
        # reads the request.
        self.transport.write(render_request(method, target, host, body))
        key = (method, target)
        if not self._primed or self._exchange_key != key:
            if self._primed:
                # Told about another exchange at release; h11 cannot take that back.
                self._h11 = self._new_parser()
            self._exchange_key = key
            self._tell_h11()
        self._primed = False
        self._last_rx = self._loop.time()
        self._arm_watchdog(self._timeout)
        return head

    def stream_body(self, sink: BodySink, raw_sink: RawSink | None = None) -> asyncio.Future[None]:
        """Hand every body read to ``sink``; the future resolves at the end of the body.

        ``raw_sink``, for chunked bodies, may take a read whole before it is decoded.
        The future raises a ``GatewayError`` if the body is cut, times out or the sink fails.
        """
        assert self._done is not None
        self._sink = sink
        self._raw_sink = raw_sink
        early, self._early = self._early, []
        for part in early:
            self._deliver(part)
        return self._done

    async def read_body(self, limit: int) -> bytes:
        """Read the whole body (error replies, /api/tags); more than ``limit`` bytes is an error."""
        buf = bytearray()

        def collect(data: bytes) -> None:
            buf.extend(data)
            if len(buf) > limit:
                raise UpstreamUnavailable(f"Ollama's reply exceeded {limit} bytes")

        await self.stream_body(collect)
        return bytes(buf)

    def release(self) -> None:
        """End of the exchange: back to the pool when clean, otherwise closed."""
        self._sink = None
        self._raw_sink = None
        self._cancel_watchdog()
        if self.state is not ConnState.ACTIVE:
            return
        if not self.complete or self._h11.our_state is not h11.DONE:
            self._close()
            return
        chunks = self._chunks
        if chunks is not None:
            if chunks.extra:
                # Bytes after the end of the body: whatever they are, do not build on them.
                self._close()
                return
            # h11 never saw this body; a fresh parser for the next exchange on this socket.
            self._h11 = self._new_parser()
        else:
            try:
                self._h11.start_next_cycle()
            except h11.LocalProtocolError:
                self._close()
                return
        # The next exchange on this connection is most likely this one again (a chat for a
        # chat): h11 is told about it now, between requests, instead of on the next one's
        # way to Ollama; begin() starts over if it turns out to be another.
        self._tell_h11()
        self._primed = True
        if self._paused:
            self.resume_reading()
        self.state = ConnState.IDLE
        self.reused = True
        self._pool.put_idle(self)

    def abort(self) -> None:
        """Drop the connection now (client left, or the exchange failed)."""
        self._sink = None
        self._raw_sink = None
        self._close()

    # -- flow control (called only by the FlowControl object) ---------------------------------

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None and self.state is ConnState.ACTIVE:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self._last_rx = self._loop.time()
            if not self.transport.is_closing():
                self.transport.resume_reading()

    # -- internals ---------------------------------------------------------------------------

    def _new_parser(self) -> h11.Connection:
        return h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD_BYTES)

    def _tell_h11(self) -> None:
        """Put h11 where sending ``_exchange_key``'s request would (see ``begin``)."""
        conn = self._h11
        conn.send(self._pool.stand_in(*self._exchange_key))
        conn.send(END_OF_MESSAGE)

    def _on_head(self, event: h11.Response) -> None:
        self.status = event.status_code
        if is_chunked(event):
            # h11 validated the head and the framing headers; the body is ours to decode.
            self._chunks = ChunkedDecoder()
        hook, self._head_hook = self._head_hook, None
        if hook is not None and self.status == 200:
            try:
                hook(self)
            except Exception as exc:  # any failure is the caller's, as a sink's would be
                self._sink_raised(exc)
                return
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def _deliver(self, data: bytes) -> None:
        sink = self._sink
        if sink is None:
            self._early.append(bytes(data))
            return
        try:
            sink(data)
        except Exception as exc:  # any failure is the sink's: _sink_raised
            self._sink_raised(exc)

    def _sink_raised(self, exc: Exception) -> None:
        if isinstance(exc, GatewayError):
            self._sink_failed(exc)
            return
        # A bug in a sink must not kill the event loop callback.
        log.error("body sink failed", exc_info=exc)
        name = type(exc).__name__
        self._sink_failed(UpstreamFailed(f"internal error while relaying the reply: {name}"))

    def _sink_failed(self, exc: GatewayError) -> None:
        done = self._done
        if done is not None and done.done() and not done.cancelled() and not done.exception():
            # The whole body had arrived before the sink saw it (a short reply buffered with
            # the head): the exchange "completed", but what it carried is a failure.
            self._done = self._loop.create_future()
            self.complete = False
        self._fail(exc)

    def _finish_exchange(self) -> None:
        self._cancel_watchdog()
        if self._head is not None and not self._head.done():
            self._head.set_exception(UpstreamUnavailable("Ollama ended the response early"))
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def _fail(self, exc: GatewayError) -> None:
        for fut in (self._head, self._done):
            if fut is not None and not fut.done():
                fut.set_exception(exc)
                # The head future may have no awaiter left; mark it retrieved.
                fut.exception()
        self._close()

    def _close(self) -> None:
        self._cancel_watchdog()
        if self.state is not ConnState.CLOSED:
            self.state = ConnState.CLOSED
            self._pool.forget(self)
        if self.transport is not None and not self.transport.is_closing():
            # abort() sends RST-free close without flushing: nothing of ours is pending, and
            # Ollama must notice at once to stop generating.
            self.transport.abort()

    def _arm_watchdog(self, delay: float) -> None:
        self._cancel_watchdog()
        self._watchdog = self._loop.call_later(delay, self._check_silence)

    def _cancel_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _check_silence(self) -> None:
        self._watchdog = None
        if self.state is not ConnState.ACTIVE or self.complete:
            return
        if self._paused:
            # Our own backpressure, not Ollama's silence.
            self._arm_watchdog(self._timeout)
            return
        silent_for = self._loop.time() - self._last_rx
        if silent_for < self._timeout:
            self._arm_watchdog(self._timeout - silent_for)
            return
        if self.status == 0:
            msg = f"Ollama sent no response within {self._timeout:g}s"
        else:
            msg = f"Ollama went silent for {self._timeout:g}s mid-response"
        self._fail(UpstreamTimeout(msg))


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
    ) -> None:
        self.host = host
        self.port = port
        self.loop = loop or asyncio.get_running_loop()
        self.connect_timeout = connect_timeout
        self.io_timeout = io_timeout
        self.max_idle = max_idle
        self._host_header = (f"[{host}]" if ":" in host else host).encode() + f":{port}".encode()
        self._idle: deque[UpstreamConnection] = deque()
        self._stand_ins: dict[tuple[bytes, bytes], h11.Request] = {}
        self._all: set[UpstreamConnection] = set()
        self.connects = 0  # connections opened (tests check reuse with it)

    def __repr__(self) -> str:
        return (
            f"<UpstreamPool {self.host}:{self.port} open={len(self._all)} idle={len(self._idle)}>"
        )

    @property
    def open_connections(self) -> int:
        return len(self._all)

    async def send(
        self,
        method: bytes,
        target: bytes,
        body: bytes | None,
        meanwhile: Callable[[], None] | None = None,
        on_head: HeadHook | None = None,
    ) -> UpstreamConnection:
        """Send one request and wait for the response head.

        ``meanwhile`` runs once, right after the request is written: set-up the caller needs
        only once the head is in, done while Ollama works instead of on the first token's
        path. ``on_head`` runs inside the read that brings a 200 head (``begin``).

        A reused keep-alive connection that fails before any response byte arrives is
        retried once on a fresh connection: Ollama closed it while idle, so the request
        never started a generation. Nothing else is ever retried.
        """
        conn = self._take_idle()
        if conn is not None:
            try:
                return await self._exchange(conn, method, target, body, meanwhile, on_head)
            except UpstreamUnavailable:
                if conn.got_response_bytes:
                    raise
                log.debug("stale keep-alive connection to Ollama; retrying once")
                meanwhile = None
        conn = await self._connect()
        return await self._exchange(conn, method, target, body, meanwhile, on_head)

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

    async def _exchange(
        self,
        conn: UpstreamConnection,
        method: bytes,
        target: bytes,
        body: bytes | None,
        meanwhile: Callable[[], None] | None,
        on_head: HeadHook | None,
    ) -> UpstreamConnection:
        try:
            head = conn.begin(method, target, self._host_header, body, on_head)
            if meanwhile is not None:
                meanwhile()
            await head
        except BaseException:
            conn.abort()
            raise
        return conn

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
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, proto = await self.loop.create_connection(factory, self.host, self.port)
        except TimeoutError:
            raise UpstreamTimeout(
                f"could not connect to Ollama at {where} within {self.connect_timeout:g}s"
            ) from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise UpstreamUnavailable(f"cannot connect to Ollama at {where}: {reason}") from None
        self.connects += 1
        self._all.add(proto)
        return proto


def render_request(method: bytes, target: bytes, host: bytes, body: bytes | None) -> bytes:
    """One request, head and body. Every part is ours: a method and path from our code, the
    host from the validated endpoint, a JSON body we encoded."""
    head = b"%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\nAccept: */*\r\n" % (
        method,
        target,
        host,
        USER_AGENT,
    )
    if body is None:
        return head + b"\r\n"
    return b"%sContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        head,
        len(body),
        body,
    )
