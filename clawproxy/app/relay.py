"""The relays: one admitted request's exchange with Ollama, re-framed for the client.

Theory of operation
-------------------
Chat (``SseRelay``, ``ChatAccumulator``) and legacy completions (``app.completions``) share
everything here but the re-framing itself: ``relay_stream`` with a ``StreamRelay`` subclass,
``relay_whole`` with an accumulator.

Ollama is always asked to stream: the silence deadline then protects non-streaming clients
too, and one code path reads every reply. Streaming clients: the SSE head goes out once
Ollama's 200 arrives; from then on each upstream read is re-framed and written inside the
upstream's ``data_received`` callback (one write per read, no task switch per token), with
heartbeats until Ollama's head. Non-streaming clients: the reads are accumulated and one
``chat.completion`` is sent at the end.

Success is reported only after Ollama's ``done`` line, and that line is the end of the
client's exchange: the answer is whole, the handler returns (its slot goes back, the request
is logged) without waiting for the terminating 0-chunk, which Go writes in a later write and
may send late. Any failure after the head and before the done line is an SSE error event
and a cut stream without ``[DONE]``. Errors before it get their status. Whatever happens,
``finish_exchange`` hands the upstream connection back: after a whole answer it finishes in
the background (to the pool at the body's end; closed on anything else, reported to no one),
otherwise it is closed at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Protocol

from clawproxy.app.dispatch import open_on_node
from clawproxy.app.services import Services
from clawproxy.errors import UPSTREAM_ERRORS, GatewayError, UpstreamFailed
from clawproxy.http.request import Request
from clawproxy.http.server import HttpConnection
from clawproxy.nodes.scheduler import Route
from clawproxy.ollama.connection import BodyReader, UpstreamConnection
from clawproxy.openai.heartbeat import Heartbeat
from clawproxy.openai.mapping import ChatPlan
from clawproxy.openai.reframe import SseReframer, error_event

SSE_HEADERS = (
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    # nginx buffers proxied responses unless told not to (PROTOCOL 5.7).
    (b"x-accel-buffering", b"no"),
)


def finish_exchange(upstream: UpstreamConnection, clean: bool) -> None:
    """``clean``: the answer is whole (the done line, nothing after it). The connection then
    finishes in the background, back to the pool at the body's end (at once in the usual
    case: the 0-chunk came with the done line or just after). Otherwise it is closed, so
    Ollama stops generating and a half-read connection is never reused."""
    if clean:
        upstream.finish_in_background()
    else:
        upstream.abort()


class Accumulator(Protocol):
    """A whole reply built from Ollama's stream (``ChatAccumulator`` and its kin)."""

    @property
    def done(self) -> bool: ...

    @property
    def extra_after_done(self) -> bool: ...

    @property
    def completion_tokens(self) -> int: ...

    def feed(self, data: bytes) -> None: ...

    def result(self) -> bytes: ...


async def relay_whole(
    svc: Services,
    request: Request,
    conn: HttpConnection,
    route: Route,
    target: bytes,
    payload: bytes,
    acc: Accumulator,
) -> None:
    """One non-streaming answer: ``acc`` fed from Ollama's stream, sent whole at its end."""
    lease, upstream = await open_on_node(svc, request, conn, route, target, payload)
    clean = False
    try:
        clean = await whole_reply(svc, request, conn, acc, upstream)
    except UPSTREAM_ERRORS as exc:
        svc.upstream_failed(exc)
        svc.nodes.scheduler.node_failed(lease.node, exc.message)
        raise
    finally:
        finish_exchange(upstream, clean)
        svc.nodes.scheduler.release(lease)


async def relay_stream(
    svc: Services,
    request: Request,
    conn: HttpConnection,
    route: Route,
    target: bytes,
    payload: bytes,
    relay: StreamRelay,
) -> None:
    """Stream the reply as SSE through ``relay``, with heartbeats from the moment a node took
    the request until its head (never before: a byte sent rules out failover)."""
    heartbeat = relay.heartbeat

    def accepted() -> None:
        heartbeat.start()
        relay.prepare()

    try:
        lease, upstream = await open_on_node(
            svc, request, conn, route, target, payload, accepted, relay, heartbeat.stop
        )
    except GatewayError as exc:
        if not conn.response_started:
            raise
        # A heartbeat already committed the 200: the error can only travel in-band, in the
        # stream's own shape (a node took the request, so ``prepare`` built it).
        code = exc.code or "upstream_error"
        request.outcome = code
        stream = relay.stream
        conn.write(
            error_event(exc.message, code) if stream is None else stream.fail(exc.message, code)
        )
        conn.cut_stream()
        return
    finally:
        heartbeat.stop()
    try:
        await relay.run(upstream)
    finally:
        if relay.upstream_error is not None:
            # The node failed mid-stream: it counts against its health (never retried).
            svc.nodes.scheduler.node_failed(lease.node, relay.upstream_error)
        svc.nodes.scheduler.release(lease)


class StreamState(Protocol):
    """What a relay reads of its re-framer (``SseReframer`` and its kin)."""

    @property
    def done(self) -> bool: ...

    @property
    def error(self) -> object: ...

    @property
    def deltas(self) -> int: ...

    @property
    def extra_after_done(self) -> bool: ...

    def eof(self) -> bytes: ...

    def fail(self, message: str, code: str) -> bytes: ...


class StreamRelay:
    """Ollama's NDJSON to one client as SSE: the upstream connection's ``ExchangeListener``
    for one streaming request, all but the re-framing (a subclass's ``prepare``).

    ``prepare()`` builds the re-framer (``stream``) and the per-read calls, ``on_data`` and
    ``on_raw``; it runs while Ollama works on the request (``send``'s ``meanwhile``), so the
    first token does not wait for it. ``on_head()`` stops the heartbeats, sends our head and
    couples the flow control; it runs inside the upstream read that brings Ollama's 200, so
    the bytes that came with that head, often the first token, reach the client in the same
    callback. The stream ends at Ollama's done line (the subclass's ``on_data`` writes the
    last bytes and calls ``answered``), or else where Ollama's body ends, ``on_end`` or
    ``on_error`` (``_end``). ``run()`` is what the handler's task does meanwhile: wait for
    that end, and hand the upstream connection back.
    """

    __slots__ = (
        "conn",
        "done",
        "heartbeat",
        "on_data",
        "on_raw",
        "request",
        "stream",
        "svc",
        "upstream_error",
    )

    # Closures built by prepare(), not methods: on the per-token path they read their
    # collaborators from closure cells; methods reading them from self's slots measured
    # about 30 ns a token slower (115 vs 145 ns a call, min of 15 runs, Python 3.11).
    on_data: Callable[[bytes], None]
    # None: no one-token fast path, every read is decoded (``on_data``).
    on_raw: Callable[[bytes], bool] | None

    def __init__(self, svc: Services, request: Request, conn: HttpConnection) -> None:
        self.on_raw = None
        self.svc = svc
        self.request = request
        self.conn = conn
        self.stream: StreamState | None = None
        interval = svc.config.server.heartbeat_interval
        self.heartbeat = Heartbeat(svc.loop, interval, self.commit, conn.write)
        # The client's stream ended: at the done line, or where Ollama's body ended.
        self.done: asyncio.Future[None] = svc.loop.create_future()
        # Why the node failed mid-stream, if it did (for its health).
        self.upstream_error: str | None = None

    def commit(self) -> None:
        """Send the 200 and the SSE head (held by the connection until the first chunk)."""
        if not self.conn.response_started:
            self.conn.start_stream(self.request, 200, SSE_HEADERS)

    def prepare(self) -> None:
        """Build ``stream``, ``on_data`` and ``on_raw`` (idempotent)."""
        raise NotImplementedError

    # -- ExchangeListener: called by the upstream connection inside its reads ----------------

    def on_head(self, conn: UpstreamConnection) -> None:
        """Ollama answered 200: our head, and every body read from now on, to the client."""
        self.heartbeat.stop()
        self.commit()
        self.prepare()
        self.conn.flow.attach(conn)

    def on_end(self) -> None:
        stream = self.stream
        assert stream is not None
        if stream.done:
            return  # answered at the done line already
        tail = stream.eof()
        if stream.error is not None:
            # A clean end of the body without Ollama's done line: the answer was cut.
            self.request.outcome = self.request.outcome or "upstream_unavailable"
            self.svc.state.upstream_errors["upstream_unavailable"] += 1
            self.upstream_error = "the reply ended without its done line"
        self._end(tail)

    def on_error(self, exc: GatewayError) -> None:
        stream = self.stream
        assert stream is not None
        if stream.done:
            # After the done line the answer stands: the connection's end is housekeeping.
            return
        code = exc.code or "upstream_error"
        tail = stream.fail(exc.message, code)
        self.request.outcome = code
        if isinstance(exc, UPSTREAM_ERRORS):
            self.svc.upstream_failed(exc)
            self.upstream_error = exc.message
        self._end(tail)

    def _end(self, tail: bytes) -> None:
        """Where the stream ends: the tail, then the last chunk, or a cut without it."""
        request, conn = self.request, self.conn
        self._settle()
        if not self.done.done():
            # Before the client writes: the task wakes ahead of a cut's connection_lost.
            self.done.set_result(None)
        if tail:
            conn.write(tail)
        request.outcome = request.outcome or "upstream_error"
        conn.cut_stream()

    def answered(self) -> None:
        """Ollama's done line was relayed: the client has its whole answer."""
        self._settle()
        if not self.done.done():
            self.done.set_result(None)

    def _settle(self) -> None:
        """Uncouple the flow control and count the tokens (idempotent)."""
        self.conn.flow.detach()
        if self.stream is not None:
            self.request.tokens = self.stream.deltas

    # -- the handler task ----------------------------------------------------------------

    async def run(self, upstream: UpstreamConnection) -> bool:
        """Wait for the stream's end, then hand the upstream connection back (or close it).
        Returns True when the stream ended cleanly.

        ``on_head`` ran already, inside the read that brought Ollama's 200: ``send()``
        returns a 200 connection only after it ran."""
        clean = False
        try:
            # What came with Ollama's head was relayed with our head already; if nothing
            # did, the head goes out alone now so the client sees its 200 at once.
            self.conn.flush()
            await self.done
            # Read now, not at the done line: bytes after it may have come meanwhile.
            stream = self.stream
            clean = stream is not None and stream.done and not stream.extra_after_done
        except asyncio.CancelledError:
            # The client left (or the drain cut it): the stream just stops.
            self._settle()
            raise
        finally:
            finish_exchange(upstream, clean)
        return clean


class DecodedStream(StreamState, Protocol):
    """A re-framer fed decoded reads whose failure is an exception to raise."""

    def feed(self, data: bytes) -> bytes: ...

    @property
    def error(self) -> Exception | None: ...


def decoded_reader(relay: StreamRelay, stream: DecodedStream) -> Callable[[bytes], None]:
    """``on_data`` for a relay without a one-token fast path (completions, responses):
    each read re-framed and written; an error line's event goes out, then reading stops;
    the done line ends the client's stream."""
    request, conn = relay.request, relay.conn
    now = relay.svc.loop.time
    answered = relay.answered

    def on_data(data: bytes) -> None:
        out = stream.feed(data)
        if request.first_token_at is None and stream.deltas:
            request.first_token_at = now()
        error = stream.error
        if error is not None:
            if out:
                conn.write(out)
            raise error
        if out:
            if stream.done:
                conn.end_stream(out)
                answered()
            else:
                conn.write(out)

    return on_data


class SseRelay(StreamRelay):
    """Chat: ``SseReframer`` with its one-token fast path (``on_raw``)."""

    __slots__ = ("plan",)

    def __init__(self, svc: Services, request: Request, conn: HttpConnection, plan: ChatPlan):
        super().__init__(svc, request, conn)
        self.plan = plan

    def prepare(self) -> None:
        if self.stream is not None:
            return
        plan, request, conn = self.plan, self.request, self.conn
        reframer = self.stream = SseReframer(
            completion_id=new_completion_id(),
            created=int(time.time()),
            model=plan.model,
            include_usage=plan.include_usage,
            max_line_bytes=self.svc.config.upstream.max_line_bytes,
            reasoning_field=self.svc.config.openai.reasoning_field,
        )
        write = conn.write
        now = self.svc.loop.time
        answered = self.answered

        def on_data(data: bytes) -> None:
            out = reframer.feed(data)
            if out:
                if reframer.done:
                    # The done line: [DONE] and the last chunk in one write, and the request
                    # is over; the upstream's end is the connection's business (run()).
                    conn.end_stream(out)
                    answered()
                else:
                    write(out)
                if request.first_token_at is None and reframer.deltas:
                    request.first_token_at = now()
            if reframer.error is not None:
                # An error line or a broken line: stop reading Ollama at once (on_error next).
                raise UpstreamFailed(reframer.error)

        feed_chunk = reframer.feed_chunk

        def on_raw(data: bytes) -> bool:
            # The one-token read, chunk framing and all (see SseReframer.feed_chunk).
            out = feed_chunk(data)
            if out is None:
                return False
            if out:
                write(out)
                if request.first_token_at is None:
                    request.first_token_at = now()
            return True

        self.on_data = on_data
        self.on_raw = on_raw


class DecodedRelay(StreamRelay):
    """A relay without a one-token fast path (forced tool calls, legacy completions,
    Responses): every read decoded and re-framed by the stream ``make`` builds once a node
    took the request. Chosen once per request by the handler, so ``SseRelay``'s per-token
    path never tests for these."""

    __slots__ = ("make",)

    def __init__(
        self,
        svc: Services,
        request: Request,
        conn: HttpConnection,
        make: Callable[[], DecodedStream],
    ) -> None:
        super().__init__(svc, request, conn)
        self.make = make

    def prepare(self) -> None:
        if self.stream is None:
            stream = self.stream = self.make()
            self.on_data = decoded_reader(self, stream)


def new_completion_id() -> str:
    # OpenAI-shaped and unique (Ollama's own ids are 0-998 and collide: PROTOCOL 3.2).
    # An id names a reply, it guards nothing: 96 bits from the random module (reseeded in
    # every forked worker) instead of a getrandom() system call per request.
    return f"chatcmpl-{random.getrandbits(96):024x}"


async def whole_reply(
    svc: Services,
    request: Request,
    conn: HttpConnection,
    acc: Accumulator,
    upstream: UpstreamConnection,
) -> bool:
    """Feed ``acc`` from the stream and answer with its one object at the done line."""
    feed = acc.feed

    def on_data(data: bytes) -> None:
        feed(data)
        if acc.done and not answered.done():
            # The done line: the answer is whole, whenever the body's end comes.
            answered.set_result(None)

    reader = BodyReader(svc.loop, on_data)
    answered = reader.done
    upstream.listen(reader)
    await answered
    body = acc.result()
    request.tokens = acc.completion_tokens
    request.first_token_at = svc.loop.time()
    conn.send(request, 200, body)
    # Read now, not at the done line: bytes after it may have come meanwhile.
    return not acc.extra_after_done
