"""POST /v1/completions (legacy): validate, route, one streamed exchange with ``/api/generate``.

Theory of operation
-------------------
The same steps as chat (``app.chat``), in the same order: the client is checked, the body
mapped (``openai.completions``), the model routed (allow-list, the nodes that serve it), a
slot taken on one of them, with failover only before any byte. Ollama is always asked to
stream, and the relays are chat's (``app.relay``): only the re-framing differs.

Streaming clients get ``text_completion`` chunks, one write per upstream read (no one-token
fast path: ``on_raw`` is None), the end of the stream at Ollama's done line; an error line or
a cut before it is an SSE error event and a cut stream without ``[DONE]``. Non-streaming
clients get one ``text_completion`` object.
"""

from __future__ import annotations

import dataclasses
import random
import time
from functools import partial

import orjson

from clawproxy.app.relay import DecodedRelay, relay_stream, relay_whole
from clawproxy.app.services import Services
from clawproxy.http.request import Request
from clawproxy.http.server import HttpConnection
from clawproxy.openai.completions import (
    CompletionAccumulator,
    CompletionPlan,
    CompletionStream,
    build_completion_plan,
)
from clawproxy.openai.mapping import parse_json_body

GENERATE_TARGET = b"/api/generate"


async def completions(svc: Services, request: Request, conn: HttpConnection) -> None:
    await svc.check_client(request)
    defaults = svc.config.model
    if defaults.name != svc.state.model:
        defaults = dataclasses.replace(defaults, name=svc.state.model)
    plan = build_completion_plan(parse_json_body(request.body), defaults)
    route = await svc.route_model(plan.model)
    request.model = route.model
    payload = orjson.dumps(plan.payload)
    if plan.stream:
        relay = DecodedRelay(svc, request, conn, partial(completion_stream, svc, plan))
        await relay_stream(svc, request, conn, route, GENERATE_TARGET, payload, relay)
        return
    acc = CompletionAccumulator(
        completion_id=new_completion_id(),
        created=int(time.time()),
        model=plan.model,
        max_line_bytes=svc.config.upstream.max_line_bytes,
    )
    await relay_whole(svc, request, conn, route, GENERATE_TARGET, payload, acc)


def new_completion_id() -> str:
    # OpenAI's shape for completions ("cmpl-"); see relay.new_completion_id for chat.
    return f"cmpl-{random.getrandbits(96):024x}"


def completion_stream(svc: Services, plan: CompletionPlan) -> CompletionStream:
    """The re-framer of one streamed reply (built once a node took the request)."""
    return CompletionStream(
        completion_id=new_completion_id(),
        created=int(time.time()),
        model=plan.model,
        include_usage=plan.include_usage,
        max_line_bytes=svc.config.upstream.max_line_bytes,
    )
