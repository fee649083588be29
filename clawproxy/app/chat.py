"""POST /v1/chat/completions: validate, admit, ask Ollama, relay.

Theory of operation
-------------------
1. The body was read and bounded by the HTTP layer; here it is parsed and mapped to an
   Ollama ``/api/chat`` request (``mapping``), so a bad request costs no slot.
2. Admission takes a slot (or queues, or refuses with 503) before anything goes upstream.
3. Ollama is always asked to stream: the silence deadline then protects non-streaming
   clients too, and one code path reads every reply.
4. Streaming clients: the SSE head goes out once Ollama's 200 arrives; from then on each
   upstream read is re-framed and written inside the upstream's ``data_received`` callback
   (one write per read, no task switch per token). Non-streaming clients: the reads are
   accumulated and one ``chat.completion`` is sent at the end.
5. Success is reported only after Ollama's ``done`` line. Any failure after the head is an
   SSE error event and a cut stream without ``[DONE]``. Errors before it get their status.

Whatever happens (client gone, timeout, bug), ``finally`` releases the upstream connection
(closing it unless the exchange ended cleanly) and the admission slot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson

from clawproxy.errors import (
    GatewayError,
    InvalidRequest,
    NotFound,
    UpstreamFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from clawproxy.ollama.upstream import ConnState
from clawproxy.openai.aggregate import ChatAccumulator
from clawproxy.openai.heartbeat import Heartbeat
from clawproxy.openai.mapping import ChatPlan, build_chat_plan, parse_json_body
from clawproxy.openai.reframe import SseReframer, error_event
from clawproxy.policy.admission import overloaded
from clawproxy.policy.guard import check_client

if TYPE_CHECKING:
    from clawproxy.gateway import Gateway
    from clawproxy.http.server import HttpConnection, Request
    from clawproxy.ollama.upstream import HeadHook, UpstreamConnection

SSE_HEADERS = (
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    # nginx buffers proxied responses unless told not to (PROTOCOL 5.7).
    (b"x-accel-buffering", b"no"),
)
# An error reply from Ollama is a short JSON object; anything bigger is not worth reading.
MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_UPSTREAM_MESSAGE_CHARS = 500
UPSTREAM_ERRORS = (UpstreamUnavailable, UpstreamTimeout, UpstreamFailed)


async def chat_completions(gw: Gateway, request: Request, conn: HttpConnection) -> None:
    check_client(gw, request)
    plan = plan_request(gw, request.body)
    request.model = plan.model
    # Before admission and before any generation can start (RELIABILITY 3, model allow-list).
    await gw.catalog.check(plan.model)
    admission = gw.state.admission
    await admission.acquire(gw.queue_timeout)
    try:
        if plan.stream:
            await relay_stream(gw, request, conn, plan)
        else:
            await relay_whole(gw, request, conn, plan)
    finally:
        admission.release()


def plan_request(gw: Gateway, body: bytes) -> ChatPlan:
    parsed = parse_json_body(body)
    defaults = gw.config.model
    if defaults.name != gw.state.model:
        defaults = dataclasses.replace(defaults, name=gw.state.model)
    return build_chat_plan(parsed, defaults)


async def open_upstream(
    gw: Gateway,
    plan: ChatPlan,
    meanwhile: Callable[[], None] | None = None,
    on_head: HeadHook | None = None,
) -> UpstreamConnection:
    """Send the chat request; return the connection once Ollama answered 200."""
    try:
        payload = orjson.dumps(plan.payload)
        upstream = await gw.pool.send(b"POST", b"/api/chat", payload, meanwhile, on_head)
        if upstream.status != 200:
            try:
                body = await upstream.read_body(MAX_ERROR_BODY_BYTES)
            finally:
                upstream.abort()
            raise upstream_status_error(upstream.status, body)
    except UPSTREAM_ERRORS as exc:
        gw.state.upstream_errors[exc.code or "upstream_error"] += 1
        raise
    return upstream


def finish_exchange(upstream: UpstreamConnection, clean: bool) -> None:
    """Back to the pool after a clean end; otherwise close it, so Ollama stops generating
    and a half-read connection is never reused."""
    if clean:
        upstream.release()
    if upstream.state is ConnState.ACTIVE:
        upstream.abort()


async def relay_whole(gw: Gateway, request: Request, conn: HttpConnection, plan: ChatPlan) -> None:
    upstream = await open_upstream(gw, plan)
    clean = False
    try:
        clean = await whole_reply(gw, request, conn, plan, upstream)
    except UPSTREAM_ERRORS as exc:
        gw.state.upstream_errors[exc.code or "upstream_error"] += 1
        raise
    finally:
        finish_exchange(upstream, clean)


async def relay_stream(gw: Gateway, request: Request, conn: HttpConnection, plan: ChatPlan) -> None:
    """Stream the reply as SSE, with heartbeats until Ollama's first byte."""
    relay = SseRelay(gw, request, conn, plan)
    heartbeat = Heartbeat(gw.loop, gw.config.server.heartbeat_interval, relay.commit, conn.write)
    heartbeat.start()

    def on_head(upstream: UpstreamConnection) -> None:
        heartbeat.stop()
        relay.start(upstream)

    try:
        upstream = await open_upstream(gw, plan, relay.prepare, on_head)
    except GatewayError as exc:
        if not conn.response_started:
            raise
        # A heartbeat already committed the 200: the error can only travel in-band.
        request.outcome = exc.code or "upstream_error"
        conn.write(error_event(exc.message, exc.code or "upstream_error"))
        conn.cut_stream()
        return
    finally:
        heartbeat.stop()
    clean = False
    try:
        clean = await relay.run(upstream)
    finally:
        finish_exchange(upstream, clean)


class SseRelay:
    """Ollama's NDJSON to one client as SSE: one re-frame and one write per upstream read.

    ``prepare()`` builds the re-framer and the body sink; it runs while Ollama works on the
    request (``UpstreamPool.send``'s ``meanwhile``), so the first token does not wait for it.
    ``start()`` sends our head and installs the sink; it runs inside the upstream read that
    brings Ollama's 200 (``send``'s ``on_head``), so the bytes that came with that head,
    often the first token, reach the client in the same callback. ``run()`` is what the
    task does after that: wait for the end of the body and close the stream.
    """

    __slots__ = (
        "body_done",
        "conn",
        "gw",
        "plan",
        "raw_sink",
        "reframer",
        "request",
        "sink",
    )

    def __init__(self, gw: Gateway, request: Request, conn: HttpConnection, plan: ChatPlan):
        self.gw = gw
        self.request = request
        self.conn = conn
        self.plan = plan
        self.reframer: SseReframer | None = None
        self.sink: Callable[[bytes], None] | None = None
        self.raw_sink: Callable[[bytes], bool] | None = None
        self.body_done: asyncio.Future[None] | None = None

    def commit(self) -> None:
        """Send the 200 and the SSE head (held by the connection until the first chunk)."""
        if not self.conn.response_started:
            self.conn.start_stream(self.request, 200, SSE_HEADERS)

    def prepare(self) -> None:
        if self.reframer is not None:
            return
        plan, request, conn = self.plan, self.request, self.conn
        reframer = self.reframer = SseReframer(
            completion_id=new_completion_id(),
            created=int(time.time()),
            model=plan.model,
            include_usage=plan.include_usage,
            max_line_bytes=self.gw.config.upstream.max_line_bytes,
        )
        write = conn.write
        now = self.gw.loop.time

        def sink(data: bytes) -> None:
            out = reframer.feed(data)
            if out:
                if reframer.done:
                    # [DONE] and the last chunk in one write; the upstream's end is not awaited.
                    conn.end_stream(out)
                else:
                    write(out)
                if request.first_token_at is None and reframer.deltas:
                    request.first_token_at = now()
            if reframer.error is not None:
                # An error line or a broken line: stop reading Ollama at once.
                raise UpstreamFailed(reframer.error)

        feed_chunk = reframer.feed_chunk

        def raw_sink(data: bytes) -> bool:
            # The one-token read, chunk framing and all (see SseReframer.feed_chunk).
            out = feed_chunk(data)
            if out is None:
                return False
            if out:
                write(out)
                if request.first_token_at is None:
                    request.first_token_at = now()
            return True

        self.sink = sink
        self.raw_sink = raw_sink

    def start(self, upstream: UpstreamConnection) -> None:
        """Ollama answered 200: our head, and every body read from now on, to the client."""
        self.commit()
        self.prepare()
        assert self.sink is not None
        self.conn.flow.attach(upstream)
        self.body_done = upstream.stream_body(self.sink, self.raw_sink)

    async def run(self, upstream: UpstreamConnection) -> bool:
        """Relay until Ollama's body ends. Returns True when it ended cleanly.

        ``start()`` ran already, inside the read that brought Ollama's 200 (``on_head``):
        ``send()`` returns a 200 connection only after its hook ran."""
        reframer, body_done = self.reframer, self.body_done
        assert reframer is not None and body_done is not None
        gw, request, conn = self.gw, self.request, self.conn
        tail = b""
        try:
            # What came with Ollama's head was relayed with our head already; if nothing
            # did, the head goes out alone now so the client sees its 200 at once.
            conn.flush()
            await body_done
            tail = reframer.eof()
            if reframer.error is not None:
                # A clean end of the body without Ollama's done line: the answer was cut.
                request.outcome = "upstream_unavailable"
                gw.state.upstream_errors["upstream_unavailable"] += 1
        except GatewayError as exc:
            tail = reframer.fail(exc.message, exc.code or "upstream_error")
            request.outcome = exc.code or "upstream_error"
            if isinstance(exc, UPSTREAM_ERRORS):
                gw.state.upstream_errors[exc.code or "upstream_error"] += 1
        finally:
            conn.flow.detach()
            request.tokens = reframer.deltas
        if tail:
            conn.write(tail)
        if reframer.done:
            conn.end_stream()
            return not reframer.extra_after_done
        request.outcome = request.outcome or "upstream_error"
        conn.cut_stream()
        return False


def new_completion_id() -> str:
    # OpenAI-shaped and unique (Ollama's own ids are 0-998 and collide: PROTOCOL 3.2).
    # An id names a reply, it guards nothing: 96 bits from the random module (reseeded in
    # every forked worker) instead of a getrandom() system call per request.
    return f"chatcmpl-{random.getrandbits(96):024x}"


async def whole_reply(
    gw: Gateway,
    request: Request,
    conn: HttpConnection,
    plan: ChatPlan,
    upstream: UpstreamConnection,
) -> bool:
    """Accumulate the stream and answer with one ``chat.completion`` object."""
    acc = ChatAccumulator(
        completion_id=new_completion_id(),
        created=int(time.time()),
        model=plan.model,
        max_line_bytes=gw.config.upstream.max_line_bytes,
    )
    await upstream.stream_body(acc.feed)
    body = acc.result()
    request.tokens = acc.completion_tokens
    request.first_token_at = gw.loop.time()
    conn.send(request, 200, body)
    return not acc.extra_after_done


def upstream_status_error(status: int, body: bytes) -> GatewayError:
    """Map an Ollama error reply to ours. Only a JSON ``error`` string is ever passed on:
    an HTML or text body from something else on that port is never reflected."""
    message = ollama_error_message(body)
    if status == 404:
        return NotFound(message or "model not found", param="model", code="model_not_found")
    if status == 400:
        return InvalidRequest(message or "Ollama rejected the request", code="upstream_rejected")
    if status == 503:
        return overloaded(message or "Ollama is busy; retry shortly", "upstream_busy")
    if status == 403:
        return UpstreamFailed(
            "Ollama refused the request (HTTP 403): check its host/origin settings"
        )
    detail = f": {message}" if message else ""
    return UpstreamFailed(f"Ollama failed with HTTP {status}{detail}")


def ollama_error_message(body: bytes) -> str | None:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return str(parsed["error"])[:MAX_UPSTREAM_MESSAGE_CHARS] or None
    return None
