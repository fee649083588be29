"""One Ollama server behind the gateway: its cap, its counts, its connections and catalog.

Theory of operation: a ``Node`` is plain state with one owner for each part. The scheduler
(``nodes.scheduler``) alone changes ``inflight``; ``Health`` holds the passive health; the
prober and the routed requests report to it through the scheduler. The connections are
the node's own: a user-path pool, and an admin pool (``ModelControl``) for probes, model
loads and details, so a probe or a minutes-long load never holds a user connection. The
catalog says which models it serves: its configured ``models``, else its ``/api/tags``.
"""

from __future__ import annotations

import enum
from collections import Counter

from clawproxy.config import NodeConfig
from clawproxy.nodes.health import Health
from clawproxy.ollama.catalog import ModelCatalog
from clawproxy.ollama.modelctl import ModelControl
from clawproxy.ollama.pool import UpstreamPool


class NodeState(enum.Enum):
    UP = "up"
    EJECTED = "ejected"
    DRAINING = "draining"
    DISABLED = "disabled"


class Node:
    """One Ollama server, as the gateway sees it."""

    __slots__ = (
        "cap",
        "catalog",
        "control",
        "draining",
        "enabled",
        "failovers",
        "health",
        "inflight",
        "loaded",
        "name",
        "peak",
        "pool",
        "priority",
        "requests",
        "room",
        "spec",
        "url",
        "version",
        "weight",
    )

    def __init__(
        self,
        spec: NodeConfig,
        cap: int,
        health: Health,
        pool: UpstreamPool,
        control: ModelControl,
        catalog: ModelCatalog,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.url = spec.url
        self.cap = cap
        # The slots this gateway may use on its own: the cap, or its share of it while
        # shared slots are degraded (coordination); what routing checks.
        self.room = cap
        # The load measure's divisor, fixed per node: inflight / (cap * weight).
        self.weight = spec.weight
        self.priority = spec.priority
        self.enabled = spec.enabled
        self.draining = False
        self.inflight = 0
        self.peak = 0
        self.health = health
        self.pool = pool
        self.control = control
        self.catalog = catalog
        # Canonical names of the models Ollama has in memory (/api/ps, and each success).
        self.loaded: frozenset[str] = frozenset()
        self.requests = 0
        # Requests moved away from this node before any byte reached the client, by reason.
        self.failovers: Counter[str] = Counter()
        self.version: str | None = None

    def __repr__(self) -> str:
        return f"<Node {self.name} {self.inflight}/{self.cap} {self.health!r}>"

    @property
    def routable(self) -> bool:
        """Whether new requests may be sent here at all (its health aside)."""
        return self.enabled and not self.draining

    def load(self) -> float:
        return self.inflight / (self.cap * self.weight)

    def state(self) -> NodeState:
        if not self.enabled:
            return NodeState.DISABLED
        if self.draining:
            return NodeState.DRAINING
        if self.health.ejected:
            return NodeState.EJECTED
        return NodeState.UP

    def close(self) -> None:
        self.pool.close()
        self.control.close()
