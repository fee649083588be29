"""The client side: one ``asyncio.Protocol`` per TCP connection, h11 for parsing.

Theory of operation
-------------------
h11 parses; every limit and deadline is ours (h11 has none but an incomplete-head cap).
A connection cycles through four phases, and each phase owns exactly one timer:

    IDLE     waiting for the next request        keep-alive timeout (close quietly)
    HEAD     bytes of a request head arrived     absolute header deadline (408)
    BODY     head accepted, body arriving        absolute body deadline (408)
    HANDLING the request is complete and runs    no timer here; the handler and the
                                                 flow-control send-stall timer own time

The head is checked when complete, not only while incomplete: request-line length (414),
header count and total header bytes (431), framing that h11 tolerates but proxies must not
(Content-Length with Transfer-Encoding, chunked in HTTP/1.0, non-origin targets: 400), and
a declared body larger than ``max_body_bytes`` is refused (413) before any of it is read.
The body is read and bounded before a handler runs, so a slow POST never holds a slot.

While a handler runs, pipelined bytes are held for the next request; past a small cap
reading is paused, so a flood behind one request cannot grow memory. Reading otherwise
continues, so a client that disconnects is noticed at once (``connection_lost`` cancels
the handler task, whose cleanup closes the Ollama connection and frees the slot). While
paused, a close would hide behind the unread bytes for the whole generation, so the
kernel's view of the connection is read every ``PAUSED_WATCH_S`` (``TCP_INFO``: a FIN
puts it in CLOSE_WAIT, a reset in CLOSE, unread bytes or not) and a client that left is
dropped there and then.

Responses are rendered here, not by h11 (every header is ours; h11's per-send validation
cost more than the rest of a request): small ones whole with Content-Length, streams as a
head and chunks, one transport write per upstream read. A stream's head is held until its
first chunk (or ``flush()``), and its last chunk rides with the final bytes: on loopback
each write wakes the peer, which costs more than all the Python around it.
A stream that failed ends with ``cut_stream()``: the connection closes without the final
chunk, so no client can mistake a cut answer for a whole one.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Protocol, cast

import h11

from clawproxy.config import ServerConfig
from clawproxy.errors import GatewayError, Overloaded, error_body, retry_headers
from clawproxy.http.flow import WRITE_HIGH_WATER_BYTES, WRITE_LOW_WATER_BYTES, FlowControl
from clawproxy.http.heads import body_data, header_list
from clawproxy.http.limits import (
    OBS_FOLD,
    Refusal,
    body_too_large,
    check_head,
    folded_head,
    parse_error_reason,
)
from clawproxy.http.parsers import ParserStock
from clawproxy.http.request import Request

log = logging.getLogger("clawproxy.server")

# Pipelined bytes we hold while a request runs before we stop reading the socket.
PIPELINE_BUFFER_BYTES = 64 * 1024
# How often a connection paused behind a long pipeline asks the kernel whether its client
# left: a slot held by a vanished client is back within about this long.
PAUSED_WATCH_S = 0.5
SERVER_HEADER = (b"server", b"clawproxy")

REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


# Linux's TCP_INFO, where the first byte is the connection's state (linux/tcp.h).
TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)
TCP_CLOSE = 7  # a reset arrived
TCP_CLOSE_WAIT = 8  # the peer sent its FIN
TCP_STATES_GONE = frozenset({TCP_CLOSE, TCP_CLOSE_WAIT})


def peer_left(transport: asyncio.BaseTransport) -> bool:
    """Whether the kernel says the client closed or reset, even with its bytes unread."""
    sock = transport.get_extra_info("socket")
    if sock is None or TCP_INFO is None:
        return False
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 8)
    except OSError:
        return True
    return bool(info) and info[0] in TCP_STATES_GONE


class Phase(enum.Enum):
    """Where the connection is in reading a request (each phase owns one timer)."""

    IDLE = "idle"
    HEAD = "head"
    BODY = "body"
    HANDLING = "handling"


class Reply(enum.Enum):
    """Where the response to the current request is: one owner for what used to be three
    flags (started, chunked, complete)."""

    NONE = "none"  # nothing written or rendered yet: an error can still get its status
    STREAM = "stream"  # a stream's head is rendered; chunks follow
    STREAM_UNTIL_CLOSE = "stream_until_close"  # HTTP/1.0: the body ends with the connection
    ERROR = "error"  # a raw error reply went out; the connection closes
    COMPLETE = "complete"  # the whole response was written


# The per-token check in write(), as one global load instead of two attribute loads.
_STREAM = Reply.STREAM

Handler = Callable[[Request, "HttpConnection"], Awaitable[None]]


class Routes(Protocol):
    """A route table: the handler for a request, or a ``GatewayError`` (404, 405, ...)."""

    def resolve(self, request: Request) -> Handler: ...


class ConnectionHost(Protocol):
    """What a connection needs from the listener that accepted it (``http.listener``)."""

    config: ServerConfig
    loop: asyncio.AbstractEventLoop
    parsers: ParserStock

    @property
    def draining(self) -> bool: ...

    def connection_opened(self, conn: HttpConnection) -> bool:
        """False refuses the connection (over ``max_connections``, or draining)."""
        ...

    def connection_closed(self, conn: HttpConnection) -> None: ...

    def request_finished(self, request: Request) -> None: ...

    def request_refused(
        self, client: str, status: int, reason: str, method: bytes = b"", path: bytes = b""
    ) -> None:
        """A request refused before a handler ran; ``method`` and ``path`` (no query) when
        its head was parsed, else empty."""
        ...


class HttpConnection(asyncio.Protocol):
    """One client connection: parse, enforce limits, run handlers, write responses."""

    def __init__(self, host: ConnectionHost, router: Routes) -> None:
        self.host = host
        self.router = router
        self.cfg = host.config
        self.loop = host.loop
        self.h11 = host.parsers.take()
        self.transport: asyncio.Transport | None = None
        self.client = "-"
        self.phase = Phase.IDLE
        self.closed = False
        self.flow = FlowControl(self.loop, self.cfg.send_timeout, self._send_stalled)
        self._timer: asyncio.TimerHandle | None = None
        self._head: h11.Request | None = None
        self._body = bytearray()
        self._task: asyncio.Task[None] | None = None
        # Bytes that arrived while a request runs (pipelining): the next parser's input.
        self._held_input = bytearray()
        # The bytes of a head h11 is still parsing (see folded_head).
        self._head_in: bytes | bytearray = b""
        # The head's fields, listed once (h11's Headers is slow to iterate).
        self._headers: list[tuple[bytes, bytes]] = []
        self._close_asked = False
        # Bytes of a Content-Length body still to come; None when h11 reads the body.
        self._body_left: int | None = None
        self._reading_paused = False
        self._paused_watch: asyncio.TimerHandle | None = None
        self._served = 0
        self._counted = False
        # The response to the request being handled, and whether the connection is kept
        # for the next one (decided at dispatch, revised by the response).
        self._reply = Reply.NONE
        self._keep_alive = True
        # A stream's rendered head, waiting to go out with its first chunk.
        self._held_head = b""
        # Set by interrupt(): the drain's end, not the client, cancelled the handler.
        self._cut_by_drain = False

    def __repr__(self) -> str:
        return (
            f"<HttpConnection {self.client} {self.phase.value} {self._reply.value}"
            f" served={self._served}>"
        )

    @property
    def response_started(self) -> bool:
        """Whether a status went out (or is rendered): an error can then only travel in-band."""
        return self._reply is not Reply.NONE

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but implement it.
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if isinstance(peer, tuple) else "-"
        if not self.host.connection_opened(self):
            # Over max_connections: refuse cleanly and spend nothing more on it.
            self._write_raw_error(
                503, "too many open connections; retry shortly", "too_many_connections"
            )
            self.closed = True
            transport.close()
            return
        self._counted = True
        # No TCP_NODELAY here: asyncio and uvloop both set it on every TCP transport.
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER_BYTES, low=WRITE_LOW_WATER_BYTES)
        # A connection that never sends a byte is closed at the header deadline.
        self._arm(self.cfg.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self.phase is Phase.HANDLING:
            held = self._held_input
            held += data
            if len(held) > PIPELINE_BUFFER_BYTES and not self._reading_paused:
                self._pause_reading()
            return
        if self._body_left is not None:
            self._take_body(data)
            return
        if self.phase is Phase.IDLE:
            self.phase = Phase.HEAD
            if self._served:
                # A kept-alive connection's next head; a new connection's header deadline
                # has run since connection_made (as nginx's client_header_timeout does).
                self._arm(self.cfg.header_timeout)
        if self.phase is Phase.HEAD:
            # The head's own bytes, kept until h11 has parsed it (folded_head).
            # Referenced, not copied, in the usual one-read head (often with its body);
            # a head in pieces grows one bytearray (linear, even one byte at a time).
            head_in = self._head_in
            if not head_in:
                self._head_in = data
            elif type(head_in) is bytearray:
                head_in += data
            else:
                self._head_in = bytearray(head_in) + data
        self.h11.receive_data(data)
        self._process()

    def eof_received(self) -> bool | None:
        # A half-close while a request runs is an abort (as nginx treats it); in every other
        # phase there is nothing left to do. Returning None lets the transport close.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        self._cancel_paused_watch()
        self.flow.close()
        if self._counted:
            self._counted = False
            self.host.connection_closed(self)
        if self._task is not None and not self._task.done() and self._reply is not Reply.COMPLETE:
            # A client that leaves after the whole answer (last chunk sent, Ollama's own end
            # still on its way) is no abort: the exchange finishes and its connection is reused.
            self._task.cancel()

    def pause_writing(self) -> None:
        self.flow.pause()

    def resume_writing(self) -> None:
        self.flow.resume()

    # -- request parsing --------------------------------------------------------------------

    def _process(self) -> None:
        while not self.closed:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                reason = parse_error_reason(exc)
                self._reject(status, f"malformed HTTP request: {reason}", "bad_request")
                return
            kind = type(event)
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if kind is h11.Request:
                assert isinstance(event, h11.Request)
                if not self._accept_head(event):
                    return
                if self._body_left is not None or self.phase is Phase.HANDLING:
                    # The body is ours to count (see _accept_head), or already complete.
                    return
            elif kind is h11.Data:
                assert isinstance(event, h11.Data)
                self._body += body_data(event)
                if len(self._body) > self.cfg.max_body_bytes:
                    self._refuse(body_too_large(self.cfg))
                    return
            elif kind is h11.EndOfMessage:
                # Whatever h11 holds past this request is the next one's.
                self._held_input = bytearray(self.h11.trailing_data[0])
                self._dispatch()
                return
            else:  # ConnectionClosed: the client finished with us
                self._close()
                return

    def _accept_head(self, head: h11.Request) -> bool:
        headers = header_list(head)
        verdict = check_head(head, headers, self.cfg)
        if isinstance(verdict, Refusal):
            self._refuse(verdict, head)
            return False
        head_in, self._head_in = self._head_in, b""
        if folded_head(head_in, len(head_in) - len(self.h11.trailing_data[0])):
            self._refuse(OBS_FOLD, head)
            return False
        length, close_asked, expect_continue = verdict
        self._head = head
        self._headers = headers
        self._close_asked = close_asked
        self._body = bytearray()
        self.phase = Phase.BODY
        if length is not None:
            # A Content-Length body is counted here, not parsed by h11 (two events fewer per
            # request); h11 keeps chunked bodies. What h11 buffered past the head is the
            # body's start; whatever follows the body is held for the next parser.
            rest, _ = self.h11.trailing_data
            self._body_left = length
            self._take_body(rest)
        if self.phase is Phase.BODY:
            # Only a body still to come gets a deadline; one that came with its head (the
            # usual POST) was dispatched above without a timer to arm and cancel.
            self._arm(self.cfg.body_timeout)
            if expect_continue and self.transport is not None:
                # The head passed every limit: the client may send the body now instead of
                # waiting out its own timer (RFC 9110 10.1.1). An over-limit body got 413.
                self.transport.write(CONTINUE)
        return True

    def _take_body(self, data: bytes | bytearray) -> None:
        left = self._body_left
        assert left is not None
        excess = b""
        if len(data) > left:
            excess = bytes(data[left:])
            data = data[:left]
        self._body += data
        left -= len(data)
        if left:
            self._body_left = left
            return
        self._body_left = None
        self._dispatch()
        if excess:
            # Pipelined: the next request's bytes, held (bounded) while this one runs.
            self.data_received(excess)

    def _dispatch(self) -> None:
        head = self._head
        assert head is not None
        self._cancel_timer()
        self.phase = Phase.HANDLING
        # The query string is dropped: nothing is ever read from it (the model comes only
        # from the validated body, RELIABILITY 3).
        path = head.target.partition(b"?")[0]
        request = Request(
            method=head.method,
            path=path,
            headers=self._headers,
            body=bytes(self._body),
            client=self.client,
            http_version=head.http_version,
            started=self.loop.time(),
        )
        self._head = None
        self._body = bytearray()
        self._reply = Reply.NONE
        self._served += 1
        # HTTP/1.1 without "Connection: close" (h11's rule too: HTTP/1.0 always closes).
        self._keep_alive = (
            self._served < self.cfg.max_requests_per_connection
            and head.http_version == b"1.1"
            and not self._close_asked
        )
        self._task = self.loop.create_task(self._run(request))

    async def _run(self, request: Request) -> None:
        try:
            handler = self.router.resolve(request)
            await handler(request, self)
        except GatewayError as exc:
            self._fail(request, exc)
        except asyncio.CancelledError:
            if self.host.draining and not self.closed and self._reply is Reply.NONE:
                # Cut by the drain deadline, not by the client: say so while we can.
                self._fail(
                    request, Overloaded("the gateway is shutting down", code="shutting_down")
                )
            cut = "shutting_down" if self._cut_by_drain else "client_abort"
            request.outcome = request.outcome or cut
            request.status = request.status if self._reply is not Reply.NONE else 499
            raise
        except Exception:
            log.exception("unhandled error in %s %s", request.method.decode(), request.path)
            self._fail(request, GatewayError("internal error in the gateway"))
        finally:
            self.host.request_finished(request)
            # A request is done: build the next new connection's parser now, off any
            # request's way to its first token (ParserStock).
            self.host.parsers.refill()
            if not self.closed:
                self._response_finished()

    def _fail(self, request: Request, exc: GatewayError) -> None:
        request.outcome = request.outcome or (exc.code or "error")
        if self._reply is not Reply.NONE:
            self.cut_stream()
        else:
            self.send(request, exc.status, exc.body(), headers=exc.response_headers())

    # -- responses (used by handlers) -------------------------------------------------------

    def send(
        self,
        request: Request,
        status: int,
        body: bytes,
        *,
        content_type: bytes = b"application/json",
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        """A complete response with Content-Length (a 204 has neither body nor length)."""
        if status == 204:
            # RFC 9110 8.6 and 15.3.5: no Content-Length, no content, in a 204.
            hdrs = [SERVER_HEADER, *headers]
            body = b""
        else:
            hdrs = [
                SERVER_HEADER,
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ]
        head = self._render_head(request, status, hdrs)
        if self.closed:
            return
        assert self.transport is not None
        # HEAD gets the headers GET would, and no body (RFC 9110 9.3.2).
        self.transport.write(head if request.method == b"HEAD" else head + body)
        self._reply = Reply.COMPLETE

    def start_stream(
        self, request: Request, status: int, headers: tuple[tuple[bytes, bytes], ...]
    ) -> None:
        """Send a streaming head; chunks follow with ``write()``."""
        hdrs = [SERVER_HEADER, *headers]
        # HTTP/1.0 peers know no chunked encoding: their body ends when the connection does.
        if request.http_version == b"1.1":
            hdrs.append((b"transfer-encoding", b"chunked"))
            reply = Reply.STREAM
        else:
            self._keep_alive = False
            reply = Reply.STREAM_UNTIL_CLOSE
        # Held, not written: the first chunk (or flush()) takes it along in the same write.
        self._held_head = self._render_head(request, status, hdrs)
        self._reply = reply

    def flush(self) -> None:
        """Send a held stream head now (no body bytes came with Ollama's head)."""
        if not self.closed:
            self._send(b"")

    def write(self, data: bytes) -> None:
        """One chunk of a streamed body. The hot path: one transport write, no h11."""
        if self.closed:
            return
        assert self.transport is not None
        out = b"%x\r\n%b\r\n" % (len(data), data) if self._reply is _STREAM else data
        # _send(out), inlined: this is the per-token path.
        if self._held_head:
            out = self._held_head + out
            self._held_head = b""
        self.transport.write(out)

    def end_stream(self, data: bytes = b"") -> None:
        """The stream's last bytes and its end, in one write; later calls do nothing."""
        reply = self._reply
        if self.closed or reply is Reply.COMPLETE:
            return
        self._reply = Reply.COMPLETE
        if reply is Reply.STREAM:
            out = (b"%x\r\n%b\r\n" % (len(data), data) if data else b"") + LAST_CHUNK
        else:
            out = data
        self._send(out)

    def _send(self, out: bytes) -> None:
        """Write ``out`` behind the held head, if any: one write for both."""
        if self._held_head:
            out = self._held_head + out
            self._held_head = b""
        if out:
            assert self.transport is not None
            self.transport.write(out)

    def interrupt(self, stream_event: bytes) -> None:
        """The drain deadline passed: end whatever this connection is doing, now."""
        task = self._task
        if task is None or task.done():
            self._close()
            return
        self._cut_by_drain = True
        if self._reply is Reply.STREAM:
            # A stream: tell the client why it ends, so it never looks complete.
            self.write(stream_event)
            self.cut_stream()
        task.cancel()

    def cut_stream(self) -> None:
        """End a failed stream: flush what was written, then close without the last chunk."""
        self._keep_alive = False
        self._close()

    def _render_head(
        self, request: Request, status: int, headers: list[tuple[bytes, bytes]]
    ) -> bytes:
        """The response head as bytes. Rendered here, not by h11: every header is ours and
        constant or already valid, and h11's per-send validation was a large share of the
        per-request cost (bench/RESULTS.md). h11 still parses every request."""
        if request.response_headers:
            headers += request.response_headers
        if request.request_id:
            headers.append((b"x-request-id", request.request_id))
        if not self._keep_alive or self.host.draining:
            self._keep_alive = False
            headers.append((b"connection", b"close"))
        request.status = status
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b""))]
        lines += [name + b": " + value + b"\r\n" for name, value in headers]
        lines.append(b"\r\n")
        return b"".join(lines)

    def _response_finished(self) -> None:
        """After a response: keep the connection for the next request, or close it."""
        self.flow.close()
        self._task = None
        if not self._keep_alive or self.host.draining or self._reply is not Reply.COMPLETE:
            self._close()
            return
        # h11 parsed the request but did not write the response, so it is not at a cycle
        # boundary: the next request gets a fresh parser, fed what was pipelined so far.
        held, self._held_input = self._held_input, bytearray()
        self.h11 = self.host.parsers.take()
        self._reply = Reply.NONE
        if held:
            self._head_in = held
            self.h11.receive_data(bytes(held))
            self.phase = Phase.HEAD
            self._arm(self.cfg.header_timeout)
        else:
            self.phase = Phase.IDLE
            self._arm(self.cfg.keepalive_timeout)
        if self._reading_paused:
            self._resume_reading()
        self._process()

    # -- reading paused behind a pipeline ----------------------------------------------------

    def _pause_reading(self) -> None:
        assert self.transport is not None
        self._reading_paused = True
        self.transport.pause_reading()
        if TCP_INFO is not None:
            self._paused_watch = self.loop.call_later(PAUSED_WATCH_S, self._watch_paused)

    def _resume_reading(self) -> None:
        assert self.transport is not None
        self._reading_paused = False
        self._cancel_paused_watch()
        self.transport.resume_reading()

    def _cancel_paused_watch(self) -> None:
        if self._paused_watch is not None:
            self._paused_watch.cancel()
            self._paused_watch = None

    def _watch_paused(self) -> None:
        self._paused_watch = None
        transport = self.transport
        if self.closed or transport is None or not self._reading_paused:
            return
        if peer_left(transport):
            # Gone behind its own pipeline: free the slot now, not after the generation.
            transport.abort()
            return
        self._paused_watch = self.loop.call_later(PAUSED_WATCH_S, self._watch_paused)

    # -- refusals, deadlines, closing ---------------------------------------------------------

    def _refuse(self, refusal: Refusal, head: h11.Request | None = None) -> None:
        self._reject(refusal.status, refusal.message, refusal.code, head)

    def _reject(
        self, status: int, message: str, code: str, head: h11.Request | None = None
    ) -> None:
        """Refuse a request we will not read further: error response, then close. The
        refusal names the method and path of ``head`` (or of the head whose body was being
        read) when there is one, never anything else the client sent."""
        self._write_raw_error(status, message, code)
        if head is None:
            head = self._head
        if head is None:
            self.host.request_refused(self.client, status, code)
        else:
            path = head.target.partition(b"?")[0]
            self.host.request_refused(self.client, status, code, head.method, path)
        self._close()

    def _write_raw_error(self, status: int, message: str, code: str) -> None:
        # Raw bytes, not h11: after a protocol error h11 may not let us send a response.
        if self.transport is None or self._reply is not Reply.NONE:
            return
        err_type = "invalid_request_error" if status < 500 else "api_error"
        body = error_body(message, err_type, None, code)
        advice = b"".join(b"%s: %s\r\n" % pair for pair in retry_headers(status))
        head = (
            b"HTTP/1.1 %d %s\r\nserver: clawproxy\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n%sconnection: close\r\n\r\n"
            % (status, REASONS.get(status, b"Error"), len(body), advice)
        )
        self._reply = Reply.ERROR
        self.transport.write(head + body)

    def _arm(self, delay: float) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(delay, self._deadline_passed)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _deadline_passed(self) -> None:
        self._timer = None
        if self.phase is Phase.HEAD:
            self._reject(408, "request head not received in time", "header_timeout")
        elif self.phase is Phase.BODY:
            self._reject(408, "request body not received in time", "body_timeout")
        elif self.phase is Phase.IDLE:
            if self._served == 0:
                self.host.request_refused(self.client, 0, "idle_connection")
            self._close()

    def _send_stalled(self) -> None:
        # The client accepted no bytes for send_timeout: free the slot and the upstream.
        self.host.request_refused(self.client, 0, "client_write_timeout")
        if self.transport is not None:
            self.transport.abort()

    def _close(self) -> None:
        self._cancel_timer()
        if self.transport is not None and not self.transport.is_closing():
            # A cut stream still shows its status: the head goes before the close.
            self.flush()
            self.transport.close()
