"""One request's way to a node: a slot, the exchange's start, and failover before any byte.

Theory of operation
-------------------
``open_on_node`` takes a slot (``Scheduler.acquire``: a node now, or the queue, or a 503)
and starts the exchange on that node (``relay.open_upstream``): write the request, wait for
Ollama's 200 head. When that start fails in a way that proves the node did nothing with
the request, and nothing has reached the client yet, the request moves to the next
candidate, at most ``routing.max_attempts`` nodes in all:

- refused, reset or unusable before the response head (``UpstreamUnavailable``);
- no connection within ``upstream.connect_timeout`` (``ConnectTimeout``): nothing was sent;
- Ollama's own 503, its queue full (``upstream_busy``): the node is marked busy, not failed.

Anything else is final: Ollama's 400 and 404 are the client's answer; a timeout waiting for
the head may have started a generation, so it is never repeated elsewhere; once the
client has a byte (a heartbeat included) the error can only travel in-band. Each outcome
is reported to the node's health through the scheduler. The caller owns the returned lease
and releases it when the exchange is over, whatever happens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import orjson

from clawproxy.app.services import Services
from clawproxy.errors import (
    UPSTREAM_ERRORS,
    ConnectTimeout,
    GatewayError,
    Overloaded,
    UpstreamUnavailable,
)
from clawproxy.http.request import Request
from clawproxy.http.server import HttpConnection
from clawproxy.nodes.node import Node
from clawproxy.nodes.scheduler import Lease, Route
from clawproxy.ollama.connection import ExchangeListener, UpstreamConnection
from clawproxy.ollama.errors import MAX_ERROR_BODY_BYTES, upstream_status_error
from clawproxy.ollama.pool import UpstreamPool

NODE_HEADER = b"x-clawproxy-node"
SESSION_HEADER = b"x-session-id"
# Longer session ids are not ids: they are not remembered.
MAX_SESSION_ID_BYTES = 256
# Messages that identify a conversation for prefix affinity: the system prompt and the
# first user turn (later turns differ, the start stays: Ollama's cache is a prefix cache).
PREFIX_MESSAGES = 2


def failover_reason(exc: GatewayError) -> str | None:
    """Why another node may take the request after ``exc``, or None when it may not."""
    if isinstance(exc, ConnectTimeout):
        return "connect_timeout"
    if isinstance(exc, UpstreamUnavailable):
        return "unavailable"
    if isinstance(exc, Overloaded) and exc.code == "upstream_busy":
        return "busy"
    return None


async def open_on_node(
    svc: Services,
    request: Request,
    conn: HttpConnection,
    route: Route,
    target: bytes,
    payload: bytes,
    meanwhile: Callable[[], None] | None = None,
    listener: ExchangeListener | None = None,
    before_retry: Callable[[], None] | None = None,
) -> tuple[Lease, UpstreamConnection]:
    """A lease and an exchange whose 200 head has arrived (see the theory above).
    ``meanwhile`` and ``listener`` are ``UpstreamPool.send``'s; ``before_retry`` runs
    before the request moves to another node."""
    scheduler = svc.nodes.scheduler
    session = _session(svc, request, payload)
    attempts = 0
    while True:
        lease = await scheduler.acquire(route, svc.queue_timeout, session=session)
        node = lease.node
        attempts += 1
        _name_node(svc, request, node)
        try:
            upstream = await open_upstream(svc, node.pool, target, payload, meanwhile, listener)
        except GatewayError as exc:
            reason = failover_reason(exc)
            if reason == "busy":
                scheduler.busy(lease)
            elif isinstance(exc, UPSTREAM_ERRORS):
                scheduler.failed(lease, exc.message)
            else:
                scheduler.answered(lease)
            scheduler.release(lease)
            others = tuple(n for n in route.candidates if n is not node)
            if (
                reason is None
                or conn.response_started
                or attempts >= svc.config.routing.max_attempts
                or not others
            ):
                raise
            node.failovers[reason] += 1
            if before_retry is not None:
                before_retry()
            route = Route(route.model, others)
            continue
        except BaseException:
            scheduler.release(lease)
            raise
        scheduler.succeeded(lease, route.model)
        return lease, upstream


async def open_upstream(
    svc: Services,
    pool: UpstreamPool,
    target: bytes,
    payload: bytes,
    meanwhile: Callable[[], None] | None = None,
    listener: ExchangeListener | None = None,
) -> UpstreamConnection:
    """POST ``payload`` to ``target`` on one node; return the connection once Ollama
    answered 200 (any other status is raised as the client's error)."""
    try:
        upstream = await pool.send(b"POST", target, payload, meanwhile, listener)
        if upstream.status != 200:
            try:
                body = await upstream.read_body(MAX_ERROR_BODY_BYTES)
            finally:
                upstream.abort()
            raise upstream_status_error(upstream.status, body)
    except UPSTREAM_ERRORS as exc:
        svc.upstream_failed(exc)
        raise
    return upstream


def _session(svc: Services, request: Request, payload: bytes) -> str | None:
    """The affinity key (``routing.affinity``): the client's ``X-Session-Id``, or, in
    ``prefix`` mode without one, the conversation's start (model and first two messages),
    so the turns of one chat find the node that has their prompt cached."""
    mode = svc.nodes.affinity
    if mode == "off":
        return None
    value = request.header(SESSION_HEADER)
    if value is not None and 0 < len(value) <= MAX_SESSION_ID_BYTES:
        return value.decode("latin-1")
    if mode != "prefix":
        return None
    return conversation_key(payload)


def conversation_key(payload: bytes) -> str | None:
    """A digest of an Ollama chat body's model and first two messages (None without
    messages: embeddings, completions)."""
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages:
        return None
    start = orjson.dumps([body.get("model"), messages[:PREFIX_MESSAGES]])
    return "prefix:" + hashlib.blake2b(start, digest_size=12).hexdigest()


def _name_node(svc: Services, request: Request, node: Node) -> None:
    """The node in the access log, and in a response header when the operator allows it."""
    request.extra["node"] = node.name
    if svc.config.gateway.expose_node_header:
        kept = tuple(h for h in request.response_headers if h[0] != NODE_HEADER)
        request.response_headers = (*kept, (NODE_HEADER, node.name.encode()))
