"""How a decoded stream ends when Ollama's body stops short of its done line.

Shared by the streams that decode every line (forced tool calls, legacy completions,
Responses): each renders its own failure in ``_close_with`` (an SSE error event, or
``response.failed``); when it is rendered is the same for all: once, and never after the
stream finished. (Not for ``SseReframer``: its per-token path keeps its own.)
"""

from __future__ import annotations

from clawproxy.errors import GatewayError, UpstreamFailed
from clawproxy.ollama.ndjson import CODE_UPSTREAM_BROKEN, MSG_STREAM_CUT


class EndsWithError:
    """``eof`` and ``fail`` for a stream with a ``_closed`` flag and a ``_close_with``."""

    _closed: bool

    def eof(self) -> bytes:
        """The upstream body ended: ``b""`` after the done line, else the failure."""
        if self._closed:
            return b""
        return self._close_with(UpstreamFailed(MSG_STREAM_CUT, code=CODE_UPSTREAM_BROKEN))

    def fail(self, message: str, code: str) -> bytes:
        """An outside failure (timeout, reset): the failure, unless already finished."""
        if self._closed:
            return b""
        return self._close_with(UpstreamFailed(message, code=code))

    def _close_with(self, exc: GatewayError) -> bytes:
        """Mark the stream failed and closed; the bytes that tell the client."""
        raise NotImplementedError
