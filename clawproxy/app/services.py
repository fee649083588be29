"""What the handlers use, handed to them by the gateway: the app layer's one context.

Theory of operation: ``gateway.Gateway`` builds every collaborator once and fills this
object with exactly the ones handlers call; handlers never see the gateway, its listeners
or its start-up code. A route table binds its handlers to one ``Services`` when it is built
(``app.public.public_router``, ``app.admin.admin_router``), so a handler's signature is the
HTTP layer's ``(request, conn)``.

Two rules every handler shares live here too, so no two of them can disagree:

- Ollama's reachability and the gateway's status. ``UpstreamProbe`` holds one answer to
  Ollama's ``/api/version`` (asked at most every ``UPSTREAM_TTL_S``, bounded by
  ``UPSTREAM_TIMEOUT_S``); admin ``/health`` asks afresh and so refreshes it, ``/stats`` and
  the UI reuse it. ``gateway_status()`` turns it into ``ok``, ``degraded`` or ``draining``
  for all of them.
- Upstream failures are counted by the step that met them (model check, model list,
  chat, hot load), whichever it was: ``upstream_failed()``. The ollama layer only raises;
  counting is telemetry, which it does not know.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from clawproxy.config import Config
from clawproxy.errors import UPSTREAM_ERRORS, GatewayError
from clawproxy.http.listener import Listener
from clawproxy.http.request import Request
from clawproxy.nodes.models import ModelLoads
from clawproxy.nodes.scheduler import Route
from clawproxy.nodes.table import NodeTable
from clawproxy.ollama.modelctl import HEALTH_TIMEOUT_S
from clawproxy.openai.models import model_entry
from clawproxy.policy.guard import ClientGuard
from clawproxy.telemetry.state import LiveState

# How long one answer from Ollama's /api/version is reused by /stats and the UI: any
# number of open dashboards ask Ollama at most this often. It may take the health check's
# own short bound, so a hung Ollama cannot hang a dashboard.
UPSTREAM_TTL_S = 5.0
UPSTREAM_TIMEOUT_S = HEALTH_TIMEOUT_S


def gateway_status(draining: bool, upstream: dict[str, Any]) -> str:
    """The one status rule: ``draining`` while shutting down, else ``ok`` when Ollama
    answered its reachability check, else ``degraded``."""
    if draining:
        return "draining"
    return "ok" if upstream.get("reachable") else "degraded"


class UpstreamProbe:
    """Ollama's reachability: one shared answer, asked at most every ``UPSTREAM_TTL_S``."""

    def __init__(self, models: ModelLoads, loop: asyncio.AbstractEventLoop) -> None:
        self._models = models
        self._loop = loop
        # (loop time asked, answer).
        self._cached: tuple[float, dict[str, Any]] | None = None
        # One question in flight: callers that arrive meanwhile wait for its answer.
        self._lock = asyncio.Lock()

    async def status(self, *, fresh: bool = False) -> dict[str, Any]:
        """The cached answer while it is young, else a new one. ``fresh``: an answer asked
        after this call began (one already in flight by then is not fresh enough)."""
        called_at = self._loop.time()
        async with self._lock:
            cached = self._cached
            if cached is not None and self._usable(cached[0], called_at, fresh):
                return cached[1]
            asked_at = self._loop.time()
            answer = await self._models.health(UPSTREAM_TIMEOUT_S)
            self._cached = (asked_at, answer)
            return answer

    def _usable(self, asked_at: float, called_at: float, fresh: bool) -> bool:
        if fresh:
            return asked_at >= called_at
        return asked_at + UPSTREAM_TTL_S > self._loop.time()


@dataclass(frozen=True, slots=True)
class Services:
    """The collaborators of one gateway's handlers."""

    config: Config
    loop: asyncio.AbstractEventLoop
    # Counters, gauges and the admission slots (LiveState owns Admission).
    state: LiveState
    # Key and rate checks for /v1 and the UI's data.
    guard: ClientGuard
    # The Ollama nodes: which serve a model, their slots and queue, their connections.
    nodes: NodeTable
    # Hot load/unload across nodes, the default model's details, reachability.
    models: ModelLoads
    # The public and admin connections: whether the gateway is draining.
    connections: Listener
    # How long a request may wait in the admission queue (read on every request).
    queue_timeout: float
    # Ollama's reachability, shared by admin /health, /stats and the UI (built from models).
    probe: UpstreamProbe = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "probe", UpstreamProbe(self.models, self.loop))

    @property
    def draining(self) -> bool:
        return self.connections.draining

    async def status(self, *, fresh: bool = False) -> tuple[str, dict[str, Any]]:
        """The gateway's status and Ollama's reachability answer it was derived from."""
        upstream = await self.probe.status(fresh=fresh)
        return gateway_status(self.draining, upstream), upstream

    def upstream_failed(self, exc: GatewayError) -> None:
        """Count one failure talking to Ollama (``kind``: the error's code, a fixed set)."""
        self.state.upstream_errors[exc.code or "upstream_error"] += 1

    @contextlib.contextmanager
    def upstream_step(self) -> Iterator[None]:
        """Count an Ollama failure met inside the block (``upstream_failed``), then let it
        go on. The chat path's own steps (``route_model``, ``relay.open_upstream``) spell
        the same try/except out: a generator context costs a microsecond per request."""
        try:
            yield
        except UPSTREAM_ERRORS as exc:
            self.upstream_failed(exc)
            raise

    async def check_client(self, request: Request) -> None:
        """The key and rate checks (``ClientGuard``), the shared bucket's included."""
        identity = self.guard.check(request)
        if identity is not None:
            await self.guard.check_shared(identity)

    async def route_model(self, name: str) -> Route:
        """The canonical name for ``name`` and the nodes that serve it, or its 404; before
        admission and before anything is generated (RELIABILITY 3, model allow-list). The
        check may be the step that finds Ollama down: counted like any other failure."""
        try:
            return await self.nodes.route(name)
        except UPSTREAM_ERRORS as exc:
            self.upstream_failed(exc)
            raise

    async def model_list(self) -> list[dict[str, Any]]:
        """OpenAI's model objects for what the nodes have installed: each node's cached
        ``/api/tags``, so concurrent lists (and model checks) share one call per node."""
        with self.upstream_step():
            entries = await self.nodes.installed()
        return [model_entry(m) for m in entries]
