"""Which node takes a request: a pure choice among the candidates with a free slot.

Theory of operation
-------------------
Among the candidates (the nodes that serve the model) that may take a request now (a free
slot, in service or due for a trial, not busy), the highest ``priority`` tier wins; a
lower tier is used only when no node of a higher one can take it. Within the tier, a node
that has the model in memory (``/api/ps``) beats one that would load it cold; then the
least loaded by ``inflight / (cap * weight)``; ties are broken at random, so equal nodes
share the traffic instead of the first one in the list taking it all.

Session affinity, when on: the node the session used last is kept while its load is within
``margin`` of the best choice's, for Ollama's prompt-cache reuse.

With one candidate (every single-node gateway) the choice is one check.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Sequence

from clawproxy.nodes.node import Node

# Sessions remembered for affinity; the oldest is forgotten first.
MAX_SESSIONS = 10_000


def can_take(node: Node, now: float) -> bool:
    return node.inflight < node.room and node.routable and node.health.available(now)


def rank(
    candidates: Sequence[Node],
    model: str,
    now: float,
    rng: random.Random,
    preferred: Node | None = None,
    margin: float = 0.0,
) -> list[Node]:
    """Every candidate that may take a request now, best first by ``choose``'s order (for
    shared slots: the first of them with a free slot in Redis takes it)."""
    free = [node for node in candidates if can_take(node, now)]
    rng.shuffle(free)  # ties in random order: a stable sort keeps it
    free.sort(key=lambda node: (-node.priority, model not in node.loaded, node.load()))
    if preferred is not None and preferred in free and free[0] is not preferred:
        best = free[0]
        if preferred.priority == best.priority and preferred.load() <= best.load() + margin:
            free.remove(preferred)
            free.insert(0, preferred)
    return free


def choose(
    candidates: Sequence[Node],
    model: str,
    now: float,
    rng: random.Random,
    preferred: Node | None = None,
    margin: float = 0.0,
) -> Node | None:
    """The node that takes the request now, or None when no candidate can."""
    if len(candidates) == 1:
        only = candidates[0]
        return only if can_take(only, now) else None
    best: list[Node] = []
    best_key: tuple[int, bool, float] | None = None
    for node in candidates:
        if not can_take(node, now):
            continue
        key = (-node.priority, model not in node.loaded, node.load())
        if best_key is None or key < best_key:
            best, best_key = [node], key
        elif key == best_key:
            best.append(node)
    if best_key is None:
        return None
    if preferred is not None and (
        preferred in best or _close_enough(preferred, best_key, margin, now)
    ):
        return preferred
    return best[0] if len(best) == 1 else rng.choice(best)


def _close_enough(
    preferred: Node, best_key: tuple[int, bool, float], margin: float, now: float
) -> bool:
    """Same tier as the best choice and not much busier: keep the session's cache warm."""
    return (
        can_take(preferred, now)
        and preferred.priority == -best_key[0]
        and preferred.load() <= best_key[2] + margin
    )


class Affinity:
    """Session id -> the node it used last, bounded (oldest forgotten first)."""

    __slots__ = ("_sessions",)

    def __init__(self) -> None:
        self._sessions: OrderedDict[str, str] = OrderedDict()

    def get(self, session: str) -> str | None:
        return self._sessions.get(session)

    def remember(self, session: str, node: str) -> None:
        sessions = self._sessions
        sessions[session] = node
        sessions.move_to_end(session)
        if len(sessions) > MAX_SESSIONS:
            sessions.popitem(last=False)
