"""POST /v1/embeddings: validate, admit, one exchange with Ollama's ``/api/embed``, render.

Theory of operation
-------------------
The same steps as chat (``app.chat``), in the same order, so a bad request costs no slot
and an unknown model never reaches Ollama:

1. The client is checked (key, rate); the body, already bounded by the HTTP layer
   (``server.max_body_bytes``), is parsed and mapped (``openai.embeddings``), the number of
   inputs bounded by ``server.max_embedding_inputs``.
2. The model passes the catalog (the allow-list); only then is ``request.model`` set.
3. The routing (``app.dispatch``) takes a slot on a node that serves the model, or queues,
   or refuses with 503: an embedding occupies the GPU as a generation does. It moves to
   another node only while that node provably did nothing (refused, busy).
4. One exchange on that node's pool: Ollama answers ``/api/embed`` with one JSON body
   after the whole batch is done, read whole within a bound proportional to the inputs.
   The slot goes back as soon as the reply is in; rendering it needs no GPU.

Failures of Ollama (refused, silent, an error of its own, a reply of the wrong shape) are
counted through ``svc.upstream_failed`` wherever they are met, as chat counts them.
"""

from __future__ import annotations

import orjson

from clawproxy.app.dispatch import open_on_node
from clawproxy.app.services import Services
from clawproxy.http.request import Request
from clawproxy.http.server import HttpConnection
from clawproxy.nodes.scheduler import Route
from clawproxy.openai.embeddings import EmbeddingsPlan, build_embeddings_plan, render_embeddings
from clawproxy.openai.mapping import parse_json_body

EMBED_TARGET = b"/api/embed"


async def embeddings(svc: Services, request: Request, conn: HttpConnection) -> None:
    await svc.check_client(request)
    plan = build_embeddings_plan(
        parse_json_body(request.body),
        svc.state.model,
        svc.config.model.context_length,
        svc.config.server.max_embedding_inputs,
    )
    route = await svc.route_model(plan.model)
    request.model = route.model
    reply = await embed_upstream(svc, request, conn, plan, route)
    with svc.upstream_step():
        body, _ = render_embeddings(plan, reply)
    conn.send(request, 200, body)


async def embed_upstream(
    svc: Services, request: Request, conn: HttpConnection, plan: EmbeddingsPlan, route: Route
) -> bytes:
    """Ollama's whole 200 reply to the plan's ``/api/embed`` request."""
    payload = orjson.dumps(plan.payload)
    lease, upstream = await open_on_node(svc, request, conn, route, EMBED_TARGET, payload)
    try:
        with svc.upstream_step():
            return await upstream.read_body(plan.reply_limit)
    finally:
        # Back to the pool when the body was read to its end; closed otherwise (an error
        # mid-body, a reply over the bound, a client gone meanwhile).
        upstream.release()
        svc.nodes.scheduler.release(lease)
