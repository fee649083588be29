"""POST /v1/chat/completions: validate, admit, ask Ollama, relay.

Theory of operation
-------------------
1. The body was read and bounded by the HTTP layer; here the client is checked (key, rate)
   and the body parsed and mapped to an Ollama ``/api/chat`` request (``mapping``), so a
   bad request costs no slot.
2. The model must pass the catalog (the allow-list) before anything can be generated.
   Fetching Ollama's model list can fail like any call to Ollama, and counts as such.
   Only then is the request's ``model`` set, to the catalog's form of the name: metrics
   label it and the access log and the UI's recent requests show it, so a name Ollama does
   not have (the client's to choose) never takes one of the bounded label slots
   (``telemetry.state.MAX_MODEL_LABELS``) nor reaches a dashboard; those requests show
   ``-``.
3. The routing (``app.dispatch``) takes a slot on a node that serves the model (or
   queues, or refuses with 503) before anything goes upstream, and moves the request to
   another node while nothing has reached the client.
4. The relay (``relay``) runs the exchange; whatever happens, the slot goes back.
"""

from __future__ import annotations

import dataclasses
import time

import orjson

from clawproxy.app.relay import (
    Accumulator,
    DecodedRelay,
    SseRelay,
    StreamRelay,
    new_completion_id,
    relay_stream,
    relay_whole,
)
from clawproxy.app.services import Services
from clawproxy.http.request import Request
from clawproxy.http.server import HttpConnection
from clawproxy.openai.aggregate import ChatAccumulator
from clawproxy.openai.forced import ForcedAccumulator, ForcedReframer
from clawproxy.openai.mapping import ChatPlan, build_chat_plan, parse_json_body

CHAT_TARGET = b"/api/chat"


async def chat_completions(svc: Services, request: Request, conn: HttpConnection) -> None:
    await svc.check_client(request)
    plan = plan_request(svc, request.body)
    # Only a name the catalog passed becomes the request's (and its metric label).
    route = await svc.route_model(plan.model)
    request.model = route.model
    payload = orjson.dumps(plan.payload)
    # A forced tool call (tool_choice required or named) has its own re-framers, picked
    # here once: the ordinary per-token path never asks.
    if plan.stream:
        relay: StreamRelay
        if plan.forced is None:
            relay = SseRelay(svc, request, conn, plan)
        else:
            forced = plan.forced
            relay = DecodedRelay(
                svc,
                request,
                conn,
                lambda: ForcedReframer(
                    forced=forced,
                    completion_id=new_completion_id(),
                    created=int(time.time()),
                    model=plan.model,
                    include_usage=plan.include_usage,
                    max_line_bytes=svc.config.upstream.max_line_bytes,
                    reasoning_field=svc.config.openai.reasoning_field,
                ),
            )
        await relay_stream(svc, request, conn, route, CHAT_TARGET, payload, relay)
        return
    acc: Accumulator
    if plan.forced is None:
        acc = ChatAccumulator(
            completion_id=new_completion_id(),
            created=int(time.time()),
            model=plan.model,
            max_line_bytes=svc.config.upstream.max_line_bytes,
            reasoning_field=svc.config.openai.reasoning_field,
        )
    else:
        acc = ForcedAccumulator(
            forced=plan.forced,
            completion_id=new_completion_id(),
            created=int(time.time()),
            model=plan.model,
            max_line_bytes=svc.config.upstream.max_line_bytes,
            reasoning_field=svc.config.openai.reasoning_field,
        )
    await relay_whole(svc, request, conn, route, CHAT_TARGET, payload, acc)


def plan_request(svc: Services, body: bytes) -> ChatPlan:
    parsed = parse_json_body(body)
    defaults = svc.config.model
    if defaults.name != svc.state.model:
        defaults = dataclasses.replace(defaults, name=svc.state.model)
    return build_chat_plan(parsed, defaults)
