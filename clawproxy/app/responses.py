"""POST /v1/responses (stateless): validate, route, one streamed exchange with ``/api/chat``.

Theory of operation
-------------------
The same steps as chat (``app.chat``), in the same order: the client is checked, the body
mapped (``openai.responses``: a Responses request is rewritten as the chat request it
means and mapped by chat's own rules), the model routed (allow-list, the nodes that serve
it), a slot taken on one of them, with failover only before any byte. Ollama is always
asked to stream, and the relays are chat's (``app.relay``): only the re-framing differs
(``openai.responses_out``).

Streaming clients get the Responses event stream, one write per upstream read (no
one-token fast path: ``on_raw`` is None), the end of the stream at Ollama's done line with
``response.completed`` (or ``response.incomplete``); an error line or a cut before it is
``response.failed`` and a cut stream. Non-streaming clients get one ``response`` object.
Nothing is stored: there is no ``GET /v1/responses/{id}``.
"""

from __future__ import annotations

import dataclasses
import random
import time
from functools import partial

import orjson

from clawproxy.app.chat import CHAT_TARGET
from clawproxy.app.relay import DecodedRelay, relay_stream, relay_whole
from clawproxy.app.services import Services
from clawproxy.http.request import Request
from clawproxy.http.server import HttpConnection
from clawproxy.openai.mapping import parse_json_body
from clawproxy.openai.responses import ResponsesPlan, build_responses_plan
from clawproxy.openai.responses_out import ResponseAccumulator, ResponseStream


async def responses(svc: Services, request: Request, conn: HttpConnection) -> None:
    await svc.check_client(request)
    defaults = svc.config.model
    if defaults.name != svc.state.model:
        defaults = dataclasses.replace(defaults, name=svc.state.model)
    plan = build_responses_plan(parse_json_body(request.body), defaults)
    # Only a name the catalog passed becomes the request's (and its metric label).
    route = await svc.route_model(plan.model)
    request.model = route.model
    payload = orjson.dumps(plan.payload)
    if plan.stream:
        relay = DecodedRelay(svc, request, conn, partial(response_stream, svc, plan))
        await relay_stream(svc, request, conn, route, CHAT_TARGET, payload, relay)
        return
    acc = ResponseAccumulator(
        response_id=new_response_id(),
        created_at=int(time.time()),
        model=plan.model,
        echo=plan.echo,
        max_line_bytes=svc.config.upstream.max_line_bytes,
        forced=plan.forced,
    )
    await relay_whole(svc, request, conn, route, CHAT_TARGET, payload, acc)


def new_response_id() -> str:
    # OpenAI's shape for responses ("resp_"); unique, not secret (see relay.new_completion_id).
    return f"resp_{random.getrandbits(96):024x}"


def response_stream(svc: Services, plan: ResponsesPlan) -> ResponseStream:
    """The re-framer of one streamed reply (built once a node took the request)."""
    return ResponseStream(
        response_id=new_response_id(),
        created_at=int(time.time()),
        model=plan.model,
        echo=plan.echo,
        max_line_bytes=svc.config.upstream.max_line_bytes,
        forced=plan.forced,
    )
