"""Collect Ollama's ``/api/chat`` NDJSON stream into one OpenAI ``chat.completion`` body.

Theory of operation: for a client that asked for ``stream: false`` the gateway still asks
Ollama to stream, so a stalled generation is visible as silence and the upstream can be
abandoned at any point. This accumulator is the non-streaming twin of
``reframe.SseReframer``: ``feed()`` per upstream read, ``result()`` once the body ended.
Every rule about what a line means (error lines, tool calls, ``finish_reason``, usage) comes
from ``ndjson``, so both kinds of client see the same answer.

Memory is bounded twice: by the line cap of the splitter and by ``max_content_bytes`` over
everything kept (content, reasoning and tool-call arguments, counted in UTF-8 bytes).
Failures raise ``errors.UpstreamFailed`` (502) with a message that never quotes upstream
garbage; after one, the accumulator keeps raising the same error.
"""

from __future__ import annotations

from typing import Any

import orjson

from clawproxy.errors import UpstreamFailed
from clawproxy.ollama.ndjson import (
    CODE_UPSTREAM_BROKEN,
    CODE_UPSTREAM_ERROR,
    DEFAULT_MAX_LINE_BYTES,
    FAST_LINE,
    MSG_INVALID_LINE,
    MSG_STREAM_CUT,
    InvalidLine,
    LineSplitter,
    LineTooLong,
    finish_reason,
    line_error,
    message_parts,
    parse_line,
    usage_counts,
)

# Far beyond any context window in tokens times bytes per token, yet a hard stop for a
# runaway generation (num_predict defaults to unlimited, PROTOCOL 1.1).
DEFAULT_MAX_CONTENT_BYTES = 16 << 20


class ChatAccumulator:
    """Accumulate one Ollama chat stream; ``result()`` renders the ``chat.completion`` body."""

    __slots__ = (
        "_content",
        "_created",
        "_error",
        "_id",
        "_kept_bytes",
        "_max_content",
        "_model",
        "_splitter",
        "_thinking",
        "_tool_calls",
        "completion_tokens",
        "done",
        "extra_after_done",
        "finish_reason",
        "prompt_tokens",
    )

    def __init__(
        self,
        *,
        completion_id: str,
        created: int,
        model: str,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES,
    ) -> None:
        self._id = completion_id
        self._created = created
        self._model = model
        self._splitter = LineSplitter(max_line_bytes)
        self._max_content = max_content_bytes
        self._kept_bytes = 0
        self._content: list[str] = []
        self._thinking: list[str] = []
        self._tool_calls: list[dict[str, Any]] = []
        self._error: UpstreamFailed | None = None
        self.done = False
        self.extra_after_done = False
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finish_reason: str | None = None

    def feed(self, data: bytes) -> None:
        """Take one upstream read; raise ``UpstreamFailed`` if the stream is unusable."""
        if self._error is not None:
            raise self._error
        if self.done:
            if data:
                self.extra_after_done = True
            return
        try:
            lines = self._splitter.feed(data)
        except LineTooLong as exc:
            raise self._fail(str(exc), CODE_UPSTREAM_BROKEN) from None
        for line in lines:
            if self.done:
                self.extra_after_done = True
                return
            self._line(line)
        if self.done and self._splitter.pending:
            self.extra_after_done = True

    def result(self) -> bytes:
        """The ``chat.completion`` JSON body; raises if the done line never came."""
        if self._error is not None:
            raise self._error
        if not self.done:
            raise self._fail(MSG_STREAM_CUT, CODE_UPSTREAM_BROKEN)
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self._content)}
        if self._thinking:
            message["reasoning_content"] = "".join(self._thinking)
        if self._tool_calls:
            message["tool_calls"] = self._tool_calls
        return orjson.dumps(
            {
                "id": self._id,
                "object": "chat.completion",
                "created": self._created,
                "model": self._model,
                "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
                "usage": {
                    "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": self.completion_tokens,
                    "total_tokens": self.prompt_tokens + self.completion_tokens,
                },
            }
        )

    def _fail(self, message: str, code: str) -> UpstreamFailed:
        self._error = UpstreamFailed(message, code=code)
        return self._error

    def _count(self, text: str) -> None:
        self._kept_bytes += len(text.encode())
        if self._kept_bytes > self._max_content:
            raise self._fail(
                f"upstream answer exceeded {self._max_content} bytes", CODE_UPSTREAM_BROKEN
            )

    def _line(self, line: bytes) -> None:
        if not line:
            return
        m = FAST_LINE.match(line)
        try:
            if m is not None:
                # The quoted string alone is a JSON document: decode just that, no dict.
                quoted = m.group(1)
                parts = self._content
                if quoted is None:
                    quoted = m.group(2)
                    parts = self._thinking
                text: str = orjson.loads(quoted)
                if text:
                    self._count(text)
                    parts.append(text)
                return
            obj = parse_line(line)
            err = line_error(obj)
            if err is not None:
                raise self._fail(err, CODE_UPSTREAM_ERROR)
            content, thinking, calls = message_parts(obj)
        except (InvalidLine, orjson.JSONDecodeError):
            raise self._fail(MSG_INVALID_LINE, CODE_UPSTREAM_BROKEN) from None
        if thinking:
            self._count(thinking)
            self._thinking.append(thinking)
        if content:
            self._count(content)
            self._content.append(content)
        for call in calls:
            self._count(call["function"]["arguments"])
            self._tool_calls.append(call)
        if obj.get("done") is True:
            self.finish_reason = finish_reason(obj.get("done_reason"), bool(self._tool_calls))
            self.prompt_tokens, self.completion_tokens = usage_counts(obj)
            self.done = True
