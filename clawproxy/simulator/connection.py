"""One client connection of the simulator: h11 parses, we write raw bytes.

Theory of operation: h11 reads requests (keep-alive and pipelining included) but never
writes: every response byte goes through ``write`` so faults can shape exactly what hits
the socket. h11 still has to know a response happened to allow the next cycle, so after
each response we report a nominal one to it and throw its bytes away.

A complete request (head and body) is recorded synchronously and handed to one handler
task; while it runs, further bytes are only buffered. ``connection_lost`` (or EOF: like Go's
net/http, a client half-close counts as gone) ends the active stream record with the
moment it happened and cancels the handler, so a paced or stalled stream stops at once.
It also gives back the generation's ``Slot`` there and then (see ``gate``), before the
cancelled handler unwinds, so the simulator's concurrency count drops with the connection.

Flow control: the transport's ``pause_writing``/``resume_writing`` flip one flag, and
writers ``await drain()`` whenever it is set, so a slow reader stops the generator instead
of growing the transport buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Protocol, cast

import h11

from .gate import Slot
from .records import RecordedRequest, StreamRecord

__all__ = ["ParsedRequest", "SimConnection", "SimHost"]


class SimHost(Protocol):
    """What a connection needs from the simulator that accepted it (``OllamaSimulator``);
    a Protocol, so this module does not import the server that imports it."""

    @property
    def closing(self) -> bool: ...

    def _connection_opened(self, conn: SimConnection) -> None: ...

    def _connection_closed(self, conn: SimConnection) -> None: ...

    def _finish_stream(self, record: StreamRecord, outcome: str) -> None: ...

    def _record_request(self, conn: SimConnection, request: ParsedRequest) -> RecordedRequest: ...

    def _track(self, task: asyncio.Task[None]) -> None: ...

    async def _dispatch(
        self, conn: SimConnection, request: ParsedRequest, recorded: RecordedRequest
    ) -> tuple[bool, float | None]: ...


_log = logging.getLogger(__name__)

# Far above any test body; it only stops a runaway client from filling memory.
MAX_REQUEST_BODY_BYTES = 64 * 1024 * 1024
# What Go's server says to a request it cannot parse.
_BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n\r\n400 Bad Request"
)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LINGER_RESET = struct.pack("ii", 1, 0)


@dataclass(slots=True)
class ParsedRequest:
    """A complete request as read off the wire."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    keep_alive: bool


class SimConnection(asyncio.Protocol):
    """The protocol object for one accepted socket."""

    def __init__(self, sim: SimHost, connection_id: int) -> None:
        self._sim = sim
        self.id = connection_id
        self._h11 = h11.Connection(h11.SERVER)
        self._transport: asyncio.Transport | None = None
        self._request: h11.Request | None = None
        self._body = bytearray()
        self._task: asyncio.Task[None] | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._resume: asyncio.Future[None] | None = None
        self.paused = False
        self.closed = False
        #: The generation being served on this connection, if any.
        self.stream: StreamRecord | None = None
        #: Its place in the simulator's generation gate, waiting or running, if any.
        self.slot: Slot | None = None

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop transports do not subclass it
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # One flush per token must mean one segment per token, as with Go.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sim._connection_opened(self)

    def data_received(self, data: bytes) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        try:
            self._h11.receive_data(data)
        except h11.RemoteProtocolError:
            self._reject()
            return
        if self._task is None:
            self._pump()

    def eof_received(self) -> bool | None:
        with contextlib.suppress(h11.RemoteProtocolError):
            self._h11.receive_data(b"")
        return None  # close our side too: a half-closed client is a gone client

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self.stream is not None:
            self._sim._finish_stream(
                self.stream, "shutdown" if self._sim.closing else "client_closed"
            )
        if self.slot is not None:
            self.slot.release()
        if self._resume is not None and not self._resume.done():
            self._resume.set_result(None)
        if self._task is not None:
            self._task.cancel()
        self._sim._connection_closed(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self._resume is not None and not self._resume.done():
            self._resume.set_result(None)

    # -- request intake ----------------------------------------------------------------

    def _pump(self) -> None:
        while not self.closed:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError:
                self._reject()
                return
            if isinstance(event, h11.Request):
                self._request = event
                self._body.clear()
                if self._h11.they_are_waiting_for_100_continue:
                    self._h11.send(h11.InformationalResponse(status_code=100, headers=[]))
                    self.write(_CONTINUE)
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > MAX_REQUEST_BODY_BYTES:
                    self._reject()
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._dispatch()
                return
            elif event is h11.NEED_DATA or event is h11.PAUSED:
                return
            else:  # ConnectionClosed: the client is done with us.
                self.close()
                return

    def _dispatch(self) -> None:
        request = self._request
        assert request is not None
        headers = [
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers
        ]
        connection_tokens = {
            token.strip().lower()
            for name, value in headers
            if name == "connection"
            for token in value.split(",")
        }
        keep_alive = request.http_version == b"1.1" and "close" not in connection_tokens
        parsed = ParsedRequest(
            method=request.method.decode("ascii"),
            target=request.target.decode("latin-1"),
            headers=headers,
            body=bytes(self._body),
            keep_alive=keep_alive,
        )
        self._body.clear()
        recorded = self._sim._record_request(self, parsed)
        task = asyncio.get_running_loop().create_task(self._serve(parsed, recorded))
        self._task = task
        self._sim._track(task)

    async def _serve(self, request: ParsedRequest, recorded: RecordedRequest) -> None:
        keep, idle_close_after = await self._sim._dispatch(self, request, recorded)
        self._task = None
        if self.closed:
            return
        if not (keep and request.keep_alive):
            self.close()
            return
        # Tell h11 a response went out (its bytes are discarded) so it allows the next one.
        try:
            self._h11.send(
                h11.Response(status_code=200, headers=[(b"transfer-encoding", b"chunked")])
            )
            self._h11.send(h11.EndOfMessage())
            self._h11.start_next_cycle()
        except h11.LocalProtocolError:
            self.close()
            return
        if idle_close_after is not None:
            loop = asyncio.get_running_loop()
            self._idle_timer = loop.call_later(idle_close_after, self._close_if_idle)
        self._pump()

    def _close_if_idle(self) -> None:
        self._idle_timer = None
        if self.idle:
            self.close()

    def _reject(self) -> None:
        self.write(_BAD_REQUEST)
        self.close()

    # -- output ------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Open, between requests, with nothing half-received."""
        return (
            not self.closed
            and self._task is None
            and self._h11.their_state is h11.IDLE
            and not self._h11.trailing_data[0]
        )

    def write(self, data: bytes) -> None:
        """Put bytes on the socket (counted on the active stream record)."""
        if self.closed or self._transport is None:
            return
        stream = self.stream
        if stream is not None:
            stream.bytes_written += len(data)
            stream.writes += 1
        self._transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport asks us to pause (peer not reading)."""
        while self.paused and not self.closed:
            if self.stream is not None:
                self.stream.write_pauses += 1
            self._resume = asyncio.get_running_loop().create_future()
            await self._resume
            self._resume = None

    async def flush_all(self) -> None:
        """Wait until the transport buffer is empty, so a following RST loses nothing of ours."""
        transport = self._transport
        if transport is None or self.closed or transport.get_write_buffer_size() == 0:
            return
        # With both marks at 0 the transport pauses us until its buffer is fully drained.
        transport.set_write_buffer_limits(high=0, low=0)
        await self.drain()

    def close(self) -> None:
        """Close after flushing (FIN)."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def reset(self) -> None:
        """Close with SO_LINGER(1, 0): the kernel sends RST instead of FIN."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        transport.abort()

    def abort(self) -> None:
        """Drop the connection now, discarding anything unsent."""
        if self._transport is not None:
            self._transport.abort()
