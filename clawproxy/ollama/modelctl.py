"""Admin-side calls to one Ollama node: warm/unload a model, details, reachability, /api/ps.

Theory of operation
-------------------
Admin work talks to Ollama over its own small ``UpstreamPool``, separate from the user
path's: a model load may legitimately take minutes (``gateway.model_load_timeout`` bounds
the wait), and admin calls must neither hold nor disturb user connections.

Warming is check, then load: ``/api/show`` says whether Ollama has the model (404
otherwise, with nothing changed); an empty ``/api/generate`` with ``keep_alive`` makes
Ollama load it, so the first user request does not pay for the load. Calls that change
what Ollama holds are serialised per node by a lock. Which nodes to warm and the switch of
the default model are decided above this module (``nodes.models``).

Model details for /stats (``/api/show`` and ``/api/ps``) are cached for
``DETAILS_TTL_S`` per default model, so a UI polling /stats does not poll Ollama.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson

from clawproxy.errors import GatewayError, NotFound, UpstreamUnavailable
from clawproxy.ollama.errors import upstream_status_error
from clawproxy.ollama.pool import UpstreamPool

# /api/show carries the modelfile, template and license text: tens of KiB; 4 MiB is ample.
MAX_SHOW_BYTES = 4 * 1024 * 1024
# /api/ps and /api/generate's load reply are a few KiB.
MAX_REPLY_BYTES = 1024 * 1024
# The health check's question to Ollama: short, so a hung Ollama cannot hang /health.
HEALTH_TIMEOUT_S = 2.0
# How long /stats reuses Ollama's model details.
DETAILS_TTL_S = 30.0
# Idle admin connections kept to Ollama; admin traffic is one operator at a time.
ADMIN_POOL_IDLE = 2


def keep_alive_value(seconds: float | None) -> float | int:
    """Ollama's ``keep_alive`` in seconds; -1 (negative) means "keep until unloaded"."""
    if seconds is None:
        return -1
    return int(seconds) if seconds == int(seconds) else seconds


class ModelControl:
    """Admin-side Ollama calls to one node.

    ``pool`` is its own (``io_timeout`` = ``gateway.model_load_timeout``, ``ADMIN_POOL_IDLE``
    idle connections), never the user path's; ``keep_alive`` is ``gateway.model_keep_alive``.
    Which node to load and which model becomes the default is decided above it
    (``nodes.models``)."""

    def __init__(
        self,
        pool: UpstreamPool,
        *,
        keep_alive: float | None,
        clock: Callable[[], float],
    ) -> None:
        self.pool = pool
        self._keep_alive = keep_alive
        self._clock = clock
        self._lock = asyncio.Lock()
        # (model, loop time it expires, details) for /stats.
        self._details: tuple[str, float, dict[str, Any]] | None = None

    def close(self) -> None:
        self.pool.close()

    async def call(
        self, method: bytes, target: bytes, body: object, limit: int
    ) -> tuple[int, bytes]:
        """One exchange with Ollama: status and the whole (bounded) body."""
        payload = None if body is None else orjson.dumps(body)
        upstream = await self.pool.send(method, target, payload)
        try:
            data = await upstream.read_body(limit)
        finally:
            upstream.release()
        return upstream.status, data

    # -- health -----------------------------------------------------------------------------

    async def upstream_health(self, timeout: float = HEALTH_TIMEOUT_S) -> dict[str, Any]:
        """Ask ``/api/version``: reachable, version and latency, or why not."""
        clock = self._clock
        started = clock()
        try:
            async with asyncio.timeout(timeout):
                status, body = await self.call(b"GET", b"/api/version", None, MAX_REPLY_BYTES)
        except TimeoutError:
            return {"reachable": False, "error": f"no answer within {timeout:g}s"}
        except GatewayError as exc:
            return {"reachable": False, "error": exc.message}
        latency_ms = round((clock() - started) * 1000, 1)
        if status != 200:
            return {"reachable": False, "error": f"HTTP {status}", "latency_ms": latency_ms}
        try:
            version = _json_object(body).get("version")
        except UpstreamUnavailable as exc:
            return {"reachable": False, "error": exc.message, "latency_ms": latency_ms}
        return {
            "reachable": True,
            "version": version if isinstance(version, str) else None,
            "latency_ms": latency_ms,
        }

    async def running(self, timeout: float = HEALTH_TIMEOUT_S) -> list[str]:
        """The names of the models Ollama has in memory (``/api/ps``)."""
        async with asyncio.timeout(timeout):
            status, body = await self.call(b"GET", b"/api/ps", None, MAX_REPLY_BYTES)
        if status != 200:
            raise UpstreamUnavailable(f"Ollama answered /api/ps with HTTP {status}")
        return [str(m["name"]) for m in _ps_summary(_json_object(body)) if m.get("name")]

    # -- hot load / unload ------------------------------------------------------------------

    async def warm(self, name: str) -> dict[str, Any]:
        """Make Ollama load ``name`` (checked to be installed first); raise a GatewayError
        on any failure. ``name`` was checked to be a model name
        (``openai.mapping.parse_model_name``)."""
        clock = self._clock
        async with self._lock:
            started = clock()
            await self._call_ok(name, b"/api/show", {"model": name}, MAX_SHOW_BYTES)
            keep_alive = keep_alive_value(self._keep_alive)
            warm = {"model": name, "prompt": "", "stream": False, "keep_alive": keep_alive}
            await self._call_ok(name, b"/api/generate", warm, MAX_REPLY_BYTES)
            self._details = None
        return {"keep_alive": keep_alive, "load_ms": round((clock() - started) * 1000, 1)}

    async def _call_ok(self, name: str, path: bytes, payload: dict[str, Any], limit: int) -> bytes:
        """POST to Ollama; 404 means the model is not installed, other errors map as chat's."""
        status, body = await self.call(b"POST", path, payload, limit)
        if status == 404:
            raise NotFound(
                f"model '{name}' is not installed in Ollama", param="model", code="model_not_found"
            )
        if status != 200:
            raise upstream_status_error(status, body)
        return body

    async def unload(self, name: str) -> None:
        """Ask Ollama to unload a model."""
        async with self._lock:
            request = {"model": name, "keep_alive": 0}
            await self._call_ok(name, b"/api/generate", request, MAX_REPLY_BYTES)
            self._details = None

    # -- details for /stats -----------------------------------------------------------------

    async def details(self, model: str) -> dict[str, Any]:
        """``model``'s details and what Ollama has loaded (cached DETAILS_TTL_S)."""
        clock = self._clock
        cached = self._details
        if cached is not None and cached[0] == model and cached[1] > clock():
            return cached[2]
        out: dict[str, Any] = {"name": model}
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                show_status, show = await self.call(
                    b"POST", b"/api/show", {"model": model}, MAX_SHOW_BYTES
                )
                ps_status, ps = await self.call(b"GET", b"/api/ps", None, MAX_REPLY_BYTES)
            if show_status == 200:
                out.update(_show_summary(_json_object(show)))
            else:
                out["error"] = f"/api/show answered HTTP {show_status}"
            out["loaded"] = _ps_summary(_json_object(ps)) if ps_status == 200 else None
        except TimeoutError:
            out["error"] = f"Ollama did not answer within {HEALTH_TIMEOUT_S:g}s"
        except GatewayError as exc:
            out["error"] = exc.message
        self._details = (model, clock() + DETAILS_TTL_S, out)
        return out


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamUnavailable("Ollama sent unreadable JSON") from None
    return parsed if isinstance(parsed, dict) else {}


def _show_summary(show: dict[str, Any]) -> dict[str, Any]:
    """The few /api/show fields an operator wants; never the template or license."""
    info = show.get("model_info")
    info = info if isinstance(info, dict) else {}
    arch = info.get("general.architecture")
    return {
        "details": show.get("details"),
        "capabilities": show.get("capabilities"),
        "context_length": info.get(f"{arch}.context_length") if isinstance(arch, str) else None,
        "parameter_count": info.get("general.parameter_count"),
        "modified_at": show.get("modified_at"),
    }


def _ps_summary(ps: dict[str, Any]) -> list[dict[str, Any]]:
    models = ps.get("models")
    keys = ("name", "size", "size_vram", "context_length", "expires_at")
    if not isinstance(models, list):
        return []
    return [{key: m.get(key) for key in keys} for m in models if isinstance(m, dict)]
