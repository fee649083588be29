"""Which model names may reach Ollama, and which are installed: one cached ``/api/tags``.

Theory of operation: with ``model.allowed`` set, that list is the whole truth. Without it,
the allow-list is "whatever Ollama has installed": its ``/api/tags`` is fetched once and
cached for ``TAGS_TTL_S``; a name missing from the cache is looked up again at most every
``MISS_REFRESH_S`` (someone may have just pulled it), so a client spraying unknown names
costs one small request per second at most, never a generation. Names compare as Ollama
compares them: case-insensitive, ``:latest`` implied; ``check`` returns that form, the one
name per model that metrics may use as a label.

The same answer is the model list (``installed``: ``/v1/models`` and the UI's picker), so
any number of concurrent list calls, chat model checks included, make one ``/api/tags``
call at a time, and at most one per ``TAGS_TTL_S`` while it succeeds. A failed fetch is
not cached: the next caller asks again (one call at a time still).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from clawproxy.errors import NotFound, UpstreamUnavailable
from clawproxy.ollama.pool import UpstreamPool
from clawproxy.ollama.tags import parse_tags

TAGS_TTL_S = 30.0
MISS_REFRESH_S = 1.0
MAX_TAGS_BYTES = 4 * 1024 * 1024


class Listing(NamedTuple):
    """One ``/api/tags`` answer: Ollama's model entries and their canonical names."""

    entries: tuple[dict[str, Any], ...]
    names: frozenset[str]


EMPTY = Listing((), frozenset())


def canonical(name: str) -> str:
    """Ollama's matching form: lower case, with the implied ``:latest`` tag."""
    name = name.lower()
    base = name.rsplit("/", 1)[-1]
    return name if ":" in base else name + ":latest"


class ModelCatalog:
    """The set of model names a request may use, cached from Ollama when not configured."""

    def __init__(
        self, pool: UpstreamPool, clock: Callable[[], float], allowed: Iterable[str] = ()
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._static = frozenset(canonical(n) for n in allowed)
        self._listing = EMPTY
        self._fetched_at = -1e18
        self._inflight: asyncio.Future[Listing] | None = None

    async def check(self, name: str) -> str:
        """``name``'s canonical form if it may be used; raise 404 ``model_not_found``
        otherwise."""
        wanted = canonical(name)
        if self._static:
            allowed = wanted in self._static
        else:
            listing = await self._refresh() if self._stale(TAGS_TTL_S) else self._listing
            allowed = wanted in listing.names
            if not allowed and self._stale(MISS_REFRESH_S):
                allowed = wanted in (await self._refresh()).names
        if not allowed:
            raise NotFound(
                f"model '{name}' not found on this gateway", param="model", code="model_not_found"
            )
        return wanted

    async def installed(self) -> tuple[dict[str, Any], ...]:
        """Ollama's ``/api/tags`` model entries, at most ``TAGS_TTL_S`` old."""
        if self._stale(TAGS_TTL_S):
            return (await self._refresh()).entries
        return self._listing.entries

    async def refresh(self) -> tuple[dict[str, Any], ...]:
        """Ask Ollama's ``/api/tags`` now (discovery); the answer is cached as usual."""
        return (await self._refresh()).entries

    def lists(self, wanted: str) -> bool:
        """Whether the last answer (or the configured list) has ``wanted`` (canonical),
        asking nothing; True while nothing is known (no answer yet)."""
        if self._static:
            return wanted in self._static
        return self._listing is EMPTY or wanted in self._listing.names

    def known_names(self) -> frozenset[str]:
        """The canonical names it serves, as last known (asking nothing)."""
        return self._static or self._listing.names

    @property
    def static(self) -> bool:
        return bool(self._static)

    def _stale(self, ttl: float) -> bool:
        return self._clock() - self._fetched_at >= ttl

    async def _refresh(self) -> Listing:
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch())
            self._inflight.add_done_callback(self._fetch_done)
        return await asyncio.shield(self._inflight)

    def _fetch_done(self, fut: asyncio.Future[Listing]) -> None:
        self._inflight = None
        if not fut.cancelled() and fut.exception() is None:
            self._listing = fut.result()
            self._fetched_at = self._clock()

    async def _fetch(self) -> Listing:
        models = tuple(parse_tags(await fetch_tags(self._pool)))
        return Listing(models, frozenset(canonical(str(m["name"])) for m in models))


async def fetch_tags(pool: UpstreamPool) -> bytes:
    """Ollama's ``/api/tags`` body (the installed models), bounded in size."""
    upstream = await pool.send(b"GET", b"/api/tags", None)
    try:
        body = await upstream.read_body(MAX_TAGS_BYTES)
    finally:
        upstream.release()
    if upstream.status != 200:
        raise UpstreamUnavailable(f"Ollama answered /api/tags with HTTP {upstream.status}")
    return body
