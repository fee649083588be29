"""What the handlers use, handed to them by the gateway: the app layer's one context.

Theory of operation: ``gateway.Gateway`` builds every collaborator once and fills this
object with exactly the ones handlers call; handlers never see the gateway, its listeners
or its start-up code. A route table binds its handlers to one ``Services`` when it is built
(``app.public.public_router``, ``app.admin.admin_router``), so a handler's signature is the
HTTP layer's ``(request, conn)``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from clawproxy.config import Config
from clawproxy.http.listener import Listener
from clawproxy.ollama.catalog import ModelCatalog
from clawproxy.ollama.modelctl import ModelControl
from clawproxy.ollama.pool import UpstreamPool
from clawproxy.policy.guard import ClientGuard
from clawproxy.telemetry.state import LiveState


@dataclass(frozen=True, slots=True)
class Services:
    """The collaborators of one gateway's handlers."""

    config: Config
    loop: asyncio.AbstractEventLoop
    # Counters, gauges and the admission slots (LiveState owns Admission).
    state: LiveState
    # Key and rate checks for /v1 and the UI's data.
    guard: ClientGuard
    # The user path's connections to Ollama.
    pool: UpstreamPool
    # Which model names may reach Ollama.
    catalog: ModelCatalog
    # Admin-side Ollama calls: hot load, details, reachability.
    models: ModelControl
    # The public and admin connections: whether the gateway is draining.
    connections: Listener
    # How long a request may wait in the admission queue (read on every request).
    queue_timeout: float

    @property
    def draining(self) -> bool:
        return self.connections.draining
