"""The bytes Ollama's Go server puts on the wire: response heads, chunks and NDJSON lines.

Theory of operation: everything here is pure (no socket, no loop), so tests can compare it
with hand-written bytes. Heads follow Go net/http: headers the handler set come first in
sorted order, then the ones the server adds itself in its fixed order (``Date``,
``Content-Length``, ``Connection``, ``Transfer-Encoding``). A streamed body is chunked, one
chunk per NDJSON line; the stream ends with a separate ``0\\r\\n\\r\\n`` write.

``Lines`` renders the per-token lines of one stream. The hot path (``content``) splices a
fresh timestamp and the escaped piece between constant prefixes built once per stream, which
gives the same bytes as marshalling the whole struct at a fraction of the cost. Rarer lines
(done, tool calls, whole non-stream objects) are built as dicts in Go field order.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from .gojson import go_dumps, go_string, go_time_now, http_date

__all__ = [
    "JSON_UTF8",
    "LAST_CHUNK",
    "NDJSON",
    "TEXT_PLAIN",
    "Lines",
    "chunk",
    "error_body",
    "metrics",
    "response_head",
]

NDJSON = "application/x-ndjson"
JSON_UTF8 = "application/json; charset=utf-8"
TEXT_PLAIN = "text/plain; charset=utf-8"
LAST_CHUNK = b"0\r\n\r\n"


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        # Go's http.StatusText is empty for unknown codes and the line then reads like this.
        return f"status code {status}"


def response_head(
    status: int,
    headers: Sequence[tuple[str, str]] = (),
    *,
    content_length: int | None = None,
    chunked: bool = False,
    close: bool = False,
) -> bytes:
    """A status line and headers as Go net/http writes them, ending with the blank line."""
    lines = [f"HTTP/1.1 {status} {_reason(status)}"]
    lines.extend(f"{name}: {value}" for name, value in sorted(headers))
    lines.append(f"Date: {http_date()}")
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    if close:
        lines.append("Connection: close")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk (lowercase hex size, as Go writes it)."""
    return b"%x\r\n%b\r\n" % (len(payload), payload)


def error_body(message: str) -> bytes:
    """Ollama's error object ``{"error": message}``."""
    return go_dumps({"error": message})


def metrics(
    total_duration: int,
    load_duration: int,
    prompt_eval_count: int,
    prompt_eval_duration: int,
    eval_count: int,
    eval_duration: int,
) -> dict[str, int]:
    """The ``Metrics`` struct in field order, zeros dropped (``omitempty``)."""
    fields = (
        ("total_duration", total_duration),
        ("load_duration", load_duration),
        ("prompt_eval_count", prompt_eval_count),
        ("prompt_eval_duration", prompt_eval_duration),
        ("eval_count", eval_count),
        ("eval_duration", eval_duration),
    )
    return {name: value for name, value in fields if value}


class Lines:
    """Renders the lines of one ``/api/chat`` or ``/api/generate`` response for ``model``.

    ``model`` is echoed exactly as the client spelled it, like Ollama does.
    """

    __slots__ = ("_after_piece", "_chat", "_content_mid", "_model", "_prefix", "_think_mid")

    def __init__(self, model: str, *, chat: bool) -> None:
        self._model = model
        self._chat = chat
        self._prefix = b'{"model":' + go_string(model) + b',"created_at":"'
        if chat:
            self._content_mid = b'","message":{"role":"assistant","content":'
            self._think_mid = b'","message":{"role":"assistant","content":"","thinking":'
            self._after_piece = b'},"done":false}\n'
        else:
            self._content_mid = b'","response":'
            self._think_mid = b'","response":"","thinking":'
            self._after_piece = b',"done":false}\n'

    @property
    def chat(self) -> bool:
        """True for ``/api/chat`` lines, False for ``/api/generate``."""
        return self._chat

    def content(self, piece: str) -> bytes:
        """One streamed content line, newline included."""
        return b"".join(
            (
                self._prefix,
                go_time_now().encode(),
                self._content_mid,
                go_string(piece),
                self._after_piece,
            )
        )

    def thinking(self, piece: str) -> bytes:
        """One streamed thinking line (content empty, ``thinking`` set), newline included."""
        return b"".join(
            (
                self._prefix,
                go_time_now().encode(),
                self._think_mid,
                go_string(piece),
                self._after_piece,
            )
        )

    def tool_calls(self, calls: list[dict[str, Any]]) -> bytes:
        """A chat line carrying whole tool calls (not done yet), newline included."""
        return go_dumps(self._chat_object("", None, calls, done=False)) + b"\n"

    def _chat_object(
        self, content: str, thinking: str | None, calls: list[dict[str, Any]] | None, *, done: bool
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if thinking:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = calls
        return {
            "model": self._model,
            "created_at": go_time_now(),
            "message": message,
            "done": done,
        }

    def final(
        self,
        done_reason: str,
        stats: dict[str, int],
        *,
        content: str = "",
        thinking: str | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
        context: list[int] | None = None,
        done: bool = True,
    ) -> bytes:
        """The done object (stream) or whole object (non-stream), without the newline.

        Also the load/unload reply, with empty ``stats``.
        """
        if self._chat:
            obj = self._chat_object(content, thinking, tool_calls, done=done)
            if done_reason:
                obj["done_reason"] = done_reason
            obj.update(stats)
            return go_dumps(obj)
        obj = {"model": self._model, "created_at": go_time_now(), "response": content}
        if thinking:
            obj["thinking"] = thinking
        obj["done"] = done
        if done_reason:
            obj["done_reason"] = done_reason
        if context:
            obj["context"] = context
        obj.update(stats)
        if tool_calls:
            obj["tool_calls"] = tool_calls
        return go_dumps(obj)

    def giant_prefix(self) -> bytes:
        """The opening of a content line, for a line that then never ends."""
        return self._prefix + go_time_now().encode() + self._content_mid + b'"'
