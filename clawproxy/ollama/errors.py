"""Ollama's error replies, mapped to the gateway's errors.

Only a JSON ``error`` string from Ollama is ever passed on, cut to a few hundred
characters: an HTML or text body from something else on that port is never reflected.
Statuses map to what a client can act on: 404 model not found, 400 rejected, 503 busy
(with ``Retry-After``), anything else a 502.
"""

from __future__ import annotations

import orjson

from clawproxy.errors import GatewayError, InvalidRequest, NotFound, UpstreamFailed, overloaded

# An error reply from Ollama is a short JSON object; anything bigger is not worth reading.
MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_UPSTREAM_MESSAGE_CHARS = 500


def upstream_status_error(status: int, body: bytes) -> GatewayError:
    """Map an Ollama error reply to ours. Only a JSON ``error`` string is ever passed on:
    an HTML or text body from something else on that port is never reflected."""
    message = ollama_error_message(body)
    if status == 404:
        return NotFound(message or "model not found", param="model", code="model_not_found")
    if status == 400:
        return InvalidRequest(message or "Ollama rejected the request", code="upstream_rejected")
    if status == 503:
        return overloaded(message or "Ollama is busy; retry shortly", "upstream_busy")
    if status == 403:
        return UpstreamFailed(
            "Ollama refused the request (HTTP 403): check its host/origin settings"
        )
    detail = f": {message}" if message else ""
    return UpstreamFailed(f"Ollama failed with HTTP {status}{detail}")


def ollama_error_message(body: bytes) -> str | None:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return str(parsed["error"])[:MAX_UPSTREAM_MESSAGE_CHARS] or None
    return None
