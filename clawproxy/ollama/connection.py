"""One HTTP/1.1 connection to Ollama: h11 for heads, our decoder for chunked bodies.

Theory of operation
-------------------
A connection carries one exchange at a time. ``begin()`` writes a request and returns a
future that resolves with the response head; the body then goes to one listener object
(``ExchangeListener``), called synchronously inside ``data_received``: ``on_head`` when a
200 head arrives, ``on_raw``/``on_data`` for body reads, and exactly one of ``on_end`` (the
body ended cleanly) or ``on_error`` (cut, silence, a protocol error, or the listener's own
failure). So there is one place where an exchange ends, and the gateway does one client
write per upstream read with no task switch per token.

A listener is installed in one of two ways. Offered to ``begin()`` (``UpstreamPool.send``),
it is installed inside the read that brings a 200 head, right after its ``on_head``: what
came with the head (usually Ollama's first token) reaches it in that same callback, not a
loop pass later when the caller's task wakes. Or given to ``listen()`` after the head, for
any status (error bodies, ``/api/tags``, non-streaming replies): what arrived in between was
kept, and is replayed in order, then the end or the failure that came after it.
``BodyReader`` is that second kind with a future: ``await reader.done`` is how every whole
body is awaited.

h11 frames a response only after it was "sent" the request: it is told about a stand-in
with the same method and target (``_tell_h11``), and for the next exchange already when a
connection goes idle, so that work is off the next request's way to Ollama.

A connection goes ``CONNECTING -> ACTIVE -> IDLE -> ACTIVE ... -> CLOSED``. It returns to
its owner's idle list only when both h11 sides reached ``DONE`` and the caller called
``release()``; anything else (an abandoned response, a timeout, a protocol error, bytes
after the end) closes it, because a half-read Ollama response would corrupt the next
exchange and an open socket keeps Ollama generating for nobody. ``release()`` and
``abort()`` drop the listener without calling it: the caller who ends an exchange knows.

A caller may also be done before the body is: Ollama's ``done`` line completes a chat, and
the terminating 0-chunk that follows is only the connection's business (Go writes it in its
own write when the handler returns, so it can come late). ``finish_in_background()`` ends
the exchange for the caller at once and swaps its listener for a housekeeping one
(``_Housekeeper``): the end of the body then releases the connection to the pool, and
anything else (a body byte more, a cut, silence past the deadline) closes it, telling
nobody. Only the listener changes, so the per-read path does no extra work.

Deadlines: one watchdog timer per exchange. ``io_timeout`` (``server.timeout``) bounds the
wait for the response head and any silence between body reads; a healthy long stream is
never cut, because every read moves the deadline. Time spent paused by our own
backpressure does not count as upstream silence.

The connection knows its owner (``UpstreamPool``) only as a ``ConnectionOwner``: this module
never imports the pool.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from typing import ClassVar, Protocol, cast

import h11

from clawproxy.errors import GatewayError, UpstreamFailed, UpstreamTimeout, UpstreamUnavailable
from clawproxy.http.chunked import ChunkedDecoder, ChunkedError
from clawproxy.http.heads import body_data, is_chunked

log = logging.getLogger("clawproxy.upstream")

# h11's default cap on an incomplete response head; Ollama's heads are a few hundred bytes.
MAX_RESPONSE_HEAD_BYTES = 64 * 1024
USER_AGENT = b"clawproxy"
END_OF_MESSAGE = h11.EndOfMessage()


class ConnState(enum.Enum):
    CONNECTING = "connecting"
    ACTIVE = "active"
    IDLE = "idle"
    CLOSED = "closed"


class ExchangeListener(Protocol):
    """Who receives one exchange's response body, inside the reads that bring it.

    Exactly one of ``on_end``/``on_error`` is called, once, for every exchange a listener
    was installed on, unless the caller ends the exchange first (``release``/``abort``).
    An exception from ``on_head``, ``on_raw`` or ``on_data`` fails the exchange: a
    ``GatewayError`` as itself, anything else logged and reported as ``UpstreamFailed``.
    """

    def on_head(self, conn: UpstreamConnection) -> None:
        """A 200 head arrived (offered listeners only): runs inside the read that brought
        it, before the rest of that read. If it raises, the listener is not installed and
        ``send()`` raises instead."""

    @property
    def on_raw(self) -> Callable[[bytes], bool] | None:
        """Offered each chunked read that starts at a chunk boundary, undecoded; returns
        True when it consumed the read (the one-token path: ``SseReframer.feed_chunk``).
        None: every read is decoded and goes to ``on_data``."""

    def on_data(self, data: bytes) -> None:
        """Decoded body bytes (one call per read, possibly several chunks joined)."""

    def on_end(self) -> None:
        """The body ended cleanly."""

    def on_error(self, exc: GatewayError) -> None:
        """The exchange failed; the connection is closed already."""


class ConnectionOwner(Protocol):
    """What a connection needs from the pool that opened it."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def io_timeout(self) -> float: ...

    def forget(self, conn: UpstreamConnection) -> None:
        """The connection closed: drop it from every list."""

    def put_idle(self, conn: UpstreamConnection) -> None:
        """The exchange ended cleanly: keep the connection for the next one."""

    def stand_in(self, method: bytes, target: bytes) -> h11.Request:
        """The request h11 is told about for ``method`` and ``target`` (see ``begin``)."""


class BodyReader:
    """A listener for a whole body: reads go to ``on_data``; ``done`` resolves at the end,
    or raises the exchange's ``GatewayError``. Install it with ``listen()``."""

    __slots__ = ("done", "on_data")

    # Every read is decoded: a whole body has no use for the one-token path.
    on_raw: ClassVar[None] = None

    def __init__(self, loop: asyncio.AbstractEventLoop, on_data: Callable[[bytes], None]):
        self.on_data = on_data
        self.done: asyncio.Future[None] = loop.create_future()

    def on_head(self, conn: UpstreamConnection) -> None:
        """Nothing to prepare: the caller awaits ``done``."""

    def on_end(self) -> None:
        # The awaiting task may have been cancelled, and the future with it.
        if not self.done.done():
            self.done.set_result(None)

    def on_error(self, exc: GatewayError) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


class _Housekeeper:
    """The listener of an exchange whose caller is done (``finish_in_background``): the end
    of the body releases the connection; a body byte more fails the exchange, which closes
    it. Either way nobody is told: the caller's request is over."""

    __slots__ = ("conn",)

    on_raw: ClassVar[None] = None

    def __init__(self, conn: UpstreamConnection) -> None:
        self.conn = conn

    def on_head(self, conn: UpstreamConnection) -> None:
        """Never offered: installed after the head."""

    def on_data(self, data: bytes) -> None:
        raise UpstreamUnavailable("Ollama sent more after its reply")

    def on_end(self) -> None:
        self.conn.release()

    def on_error(self, exc: GatewayError) -> None:
        log.debug("upstream connection closed after its reply: %s", exc.message)


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to Ollama, carrying one exchange at a time."""

    def __init__(self, owner: ConnectionOwner) -> None:
        self._owner = owner
        self._loop = owner.loop
        self._h11 = self._new_parser()
        self.transport: asyncio.Transport | None = None
        self.state = ConnState.CONNECTING
        self.reused = False
        self.status = 0
        # Set when any response byte arrived for the current exchange: a retry is then unsafe.
        self.got_response_bytes = False
        # The body ended cleanly on the wire.
        self.complete = False
        self._head: asyncio.Future[None] | None = None
        # Offered to begin(); installed at a 200 head.
        self._offered: ExchangeListener | None = None
        # The installed listener and its two per-read methods, looked up once per exchange.
        self._listener: ExchangeListener | None = None
        self._on_raw: Callable[[bytes], bool] | None = None
        self._on_data: Callable[[bytes], None] | None = None
        # Body bytes that arrived before a listener, and how the exchange failed, if it did:
        # both kept for listen().
        self._early: list[bytes] = []
        self._failure: GatewayError | None = None
        self._chunks: ChunkedDecoder | None = None
        # The exchange h11 was last told about, and whether it was told already (primed).
        self._exchange_key: tuple[bytes, bytes] = (b"", b"")
        self._primed = False
        self._paused = False
        self._timeout = owner.io_timeout
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
            # that starts at a chunk boundary is first offered undecoded to the listener
            # (the one-token read: see SseReframer.feed_chunk); what it declines is decoded.
            on_raw = self._on_raw
            if on_raw is not None and chunks.at_boundary:
                try:
                    if on_raw(data):
                        return
                except Exception as exc:  # any failure is the listener's: _listener_raised
                    self._listener_raised(exc)
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
        # h11 hands body data out as bytearray (typed bytes): made bytes once, at delivery.
        parts: list[bytes | bytearray] = []
        try:
            conn.receive_data(data)
            while True:
                event = conn.next_event()
                kind = type(event)
                if kind is h11.Data:
                    parts.append(body_data(event))  # type: ignore[arg-type]
                elif event is h11.NEED_DATA:
                    break
                elif kind is h11.Response:
                    self._on_head(event)  # type: ignore[arg-type]
                    if self.state is not ConnState.ACTIVE:
                        return  # the listener's on_head failed the exchange
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
            self._deliver(bytes(parts[0]) if len(parts) == 1 else b"".join(parts))
        if self.complete:
            self._finish_exchange()

    def eof_received(self) -> bool | None:
        # Let the transport close; connection_lost reports what was missing.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        was_active = self.state is ConnState.ACTIVE
        self.state = ConnState.CLOSED
        self._cancel_watchdog()
        self._owner.forget(self)
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
        listener: ExchangeListener | None = None,
    ) -> asyncio.Future[None]:
        """Write one request; the future it returns resolves with the response head.

        ``listener``, if given, is installed inside the read that completes a 200 head,
        after its ``on_head`` and before the rest of that read is handled (see the module's
        theory). On any other head it is dropped unused: read the body with ``listen()``.
        """
        assert self.transport is not None
        self.state = ConnState.ACTIVE
        self.status = 0
        self.got_response_bytes = False
        self.complete = False
        self._detach()
        self._offered = listener
        self._early = []
        self._failure = None
        self._chunks = None
        self._head = head = self._loop.create_future()
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

    def listen(self, listener: ExchangeListener) -> None:
        """Install ``listener`` for this exchange's body, after the head (any status).

        What arrived already is replayed to it now, in order, then the end or the failure
        if one came: the listener sees the same calls however the reads fell.
        """
        assert self._listener is None, "the exchange has a listener already"
        early, self._early = self._early, []
        self._install(listener)
        for part in early:
            self._deliver(part)
            if self._current_listener() is not listener:
                return  # its on_data failed the exchange, and it was told
        if self._failure is not None:
            self._report(listener, self._failure)
        elif self.complete:
            self._report(listener, None)

    async def read_body(self, limit: int) -> bytes:
        """Read the whole body (error replies, /api/tags); more than ``limit`` bytes is an error."""
        buf = bytearray()

        def collect(data: bytes) -> None:
            buf.extend(data)
            if len(buf) > limit:
                raise UpstreamUnavailable(f"Ollama's reply exceeded {limit} bytes")

        reader = BodyReader(self._loop, collect)
        self.listen(reader)
        await reader.done
        return bytes(buf)

    def finish_in_background(self) -> None:
        """End of the exchange for the caller, who has what it needed (Ollama's done line)
        though the body may not have ended yet: that end is housekeeping.

        If it ended already, this is ``release()``. Otherwise the caller's listener is
        dropped uncalled and the connection reads on by itself: the end of the body puts it
        back in the pool, as ``release()`` would; anything else closes it (a body byte more,
        since the caller's reply was whole; a cut; silence past ``io_timeout``).
        """
        if self.state is not ConnState.ACTIVE or self.complete:
            self.release()
            return
        self._install(_Housekeeper(self))
        # The caller's flow control let go of it: nobody else would resume it.
        self.resume_reading()

    def release(self) -> None:
        """End of the exchange: back to the pool when clean, otherwise closed."""
        self._detach()
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
            if self._h11.trailing_data[0]:
                # The same for a body h11 framed: it would parse them as the next response.
                self._close()
                return
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
        self._owner.put_idle(self)

    def abort(self) -> None:
        """Drop the connection now (client left, or the exchange failed)."""
        self._detach()
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
        conn.send(self._owner.stand_in(*self._exchange_key))
        conn.send(END_OF_MESSAGE)

    def _on_head(self, event: h11.Response) -> None:
        self.status = event.status_code
        if is_chunked(event):
            # h11 validated the head and the framing headers; the body is ours to decode.
            self._chunks = ChunkedDecoder()
        offered, self._offered = self._offered, None
        if offered is not None and self.status == 200:
            try:
                offered.on_head(self)
            except Exception as exc:  # any failure is the listener's, as its on_data's would be
                self._listener_raised(exc)
                return
            self._install(offered)
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def _current_listener(self) -> ExchangeListener | None:
        # Read through a call: after listen()'s check that none was installed, a plain read
        # would keep the type checker's "None" past the installing call (and the compiled
        # build checks it).
        return self._listener

    def _install(self, listener: ExchangeListener) -> None:
        self._listener = listener
        # Bound once here, not looked up on every read.
        self._on_raw = listener.on_raw
        self._on_data = listener.on_data

    def _detach(self) -> None:
        self._offered = None
        self._listener = None
        self._on_raw = None
        self._on_data = None

    def _deliver(self, data: bytes) -> None:
        on_data = self._on_data
        if on_data is None:
            self._early.append(bytes(data))
            return
        try:
            on_data(data)
        except Exception as exc:  # any failure is the listener's: _listener_raised
            self._listener_raised(exc)

    def _listener_raised(self, exc: Exception) -> None:
        if isinstance(exc, GatewayError):
            self._fail(exc)
            return
        # A bug in a listener must not kill the event loop callback.
        log.error("exchange listener failed", exc_info=exc)
        name = type(exc).__name__
        self._fail(UpstreamFailed(f"internal error while relaying the reply: {name}"))

    def _finish_exchange(self) -> None:
        """The body ended cleanly: ``on_end`` now, or in ``listen()``."""
        self._cancel_watchdog()
        if self._head is not None and not self._head.done():
            self._head.set_exception(UpstreamUnavailable("Ollama ended the response early"))
        listener = self._listener
        if listener is not None and self._failure is None:
            self._report(listener, None)

    def _fail(self, exc: GatewayError) -> None:
        """The exchange failed: close, then ``on_error`` now, or in ``listen()``."""
        if self._failure is None:
            self._failure = exc
        head = self._head
        if head is not None and not head.done():
            head.set_exception(exc)
            # The head future may have no awaiter left; mark it retrieved.
            head.exception()
        self._close()
        listener = self._listener
        if listener is not None:
            self._report(listener, exc)

    def _report(self, listener: ExchangeListener, exc: GatewayError | None) -> None:
        """The one end of an exchange for its listener, which is detached first: once."""
        self._detach()
        try:
            if exc is None:
                listener.on_end()
            else:
                listener.on_error(exc)
        except Exception:
            log.exception("exchange listener failed at the end of the body")
            self._close()

    def _close(self) -> None:
        self._cancel_watchdog()
        if self.state is not ConnState.CLOSED:
            self.state = ConnState.CLOSED
            self._owner.forget(self)
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
