"""Collect Ollama's ``/api/chat`` NDJSON stream into one OpenAI ``chat.completion`` body.

Theory of operation: for a client that asked for ``stream: false`` the gateway still asks
Ollama to stream, so a stalled generation is visible as silence and the upstream can be
abandoned at any point. This accumulator is the non-streaming twin of
``reframe.SseReframer``: ``feed()`` per upstream read, ``result()`` once the body ended.
Every rule about what a line means (error lines, tool calls, ``finish_reason``, usage) comes
from ``ndjson``, so both kinds of client see the same answer.

What is kept is already the output: content and reasoning as the bytes of a JSON string's
inside (escaped), tool calls as their rendered JSON objects, each in one ``bytearray``.
A content-only line's quoted string is spliced in as Ollama escaped it, the way the
re-framer splices it (it is still decoded once, so invalid UTF-8 fails the answer as an
invalid line). A list of ``str`` per token costs ~60 bytes of object headers and pointer
per token, 8 times the text for 8-byte tokens (136 MiB held for a 16 MiB answer, measured);
three bytearrays hold the text and about 1/8 slack.

Memory is bounded twice: by the line cap of the splitter and by ``max_content_bytes`` over
everything held (those three buffers, counted as they are held: escaped JSON bytes), checked
before each append, so a flood costs about its cap while it lasts and ``result()`` about
twice that (the buffers and the body). Failures raise ``errors.UpstreamFailed`` (502) with a
message that never quotes upstream garbage; after one, the buffers are dropped and the
accumulator keeps raising the same error.
"""

from __future__ import annotations

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
from clawproxy.openai.reframe import reasoning_keys

# Far beyond any context window in tokens times bytes per token, yet a hard stop for a
# runaway generation (num_predict defaults to unlimited, PROTOCOL 1.1).
DEFAULT_MAX_CONTENT_BYTES = 16 << 20

_fast_line = FAST_LINE.match


class ChatAccumulator:
    """Accumulate one Ollama chat stream; ``result()`` renders the ``chat.completion`` body."""

    __slots__ = (
        "_calls",
        "_content",
        "_error",
        "_head",
        "_kept_bytes",
        "_max_content",
        "_reasoning_keys",
        "_splitter",
        "_thinking",
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
        reasoning_field: str = "reasoning_content",
    ) -> None:
        first, twice = reasoning_keys(reasoning_field)
        self._reasoning_keys = (first,) if twice is None else (first, twice)
        self._head = (
            b'{"id":'
            + orjson.dumps(completion_id)
            + b',"object":"chat.completion","created":'
            + orjson.dumps(created)
            + b',"model":'
            + orjson.dumps(model)
            + b',"choices":[{"index":0,"message":{"role":"assistant","content":'
        )
        self._splitter = LineSplitter(max_line_bytes)
        self._max_content = max_content_bytes
        self._kept_bytes = 0
        # The inside of the content and reasoning JSON strings, and the tool calls as
        # comma-separated JSON objects: the bytes of the body to be, nothing else.
        self._content = bytearray()
        self._thinking = bytearray()
        self._calls = bytearray()
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
        parts: list[bytes | bytearray] = [self._head]
        if self._content or not self._calls:
            parts += (b'"', self._content, b'"')
        else:
            # Only tool calls, no text: null, as OpenAI sends it (not an empty string).
            parts.append(b"null")
        if self._thinking:
            for key in self._reasoning_keys:
                parts += (b',"', key, b'":"', self._thinking, b'"')
        if self._calls:
            parts += (b',"tool_calls":[', self._calls, b"]")
        usage = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        parts.append(
            b'},"finish_reason":'
            + orjson.dumps(self.finish_reason)
            + b'}],"usage":'
            + orjson.dumps(usage)
            + b"}"
        )
        # One allocation of the final size: the body plus the buffers is the peak.
        return b"".join(parts)

    def _fail(self, message: str, code: str) -> UpstreamFailed:
        self._error = UpstreamFailed(message, code=code)
        # Nothing kept is of use any more: give the memory back now, not when the relay ends.
        # Emptied in place: the error's traceback holds frames that still name the buffers.
        self._content.clear()
        self._thinking.clear()
        self._calls.clear()
        return self._error

    def _keep(self, size: int) -> None:
        """Count ``size`` more bytes held, or fail before they are appended."""
        kept = self._kept_bytes + size
        if kept > self._max_content:
            raise self._fail(
                f"upstream answer exceeded {self._max_content} bytes", CODE_UPSTREAM_BROKEN
            )
        self._kept_bytes = kept

    def _line(self, line: bytes) -> None:
        if not line:
            return
        m = _fast_line(line)
        try:
            if m is not None:
                # The quoted string alone is a JSON document, escaped as the body needs it.
                quoted = m.group(1)
                buf = self._content
                if quoted is None:
                    quoted = m.group(2)
                    buf = self._thinking
                if len(quoted) > 2:
                    # Decoded only to be checked (UTF-8, which the pattern trusts); dropped.
                    orjson.loads(quoted)
                    self._keep(len(quoted) - 2)
                    buf += quoted[1:-1]
                return
            obj = parse_line(line)
            err = line_error(obj)
            if err is not None:
                raise self._fail(err, CODE_UPSTREAM_ERROR)
            content, thinking, calls = message_parts(obj)
        except (InvalidLine, orjson.JSONDecodeError):
            raise self._fail(MSG_INVALID_LINE, CODE_UPSTREAM_BROKEN) from None
        if thinking:
            self._append(self._thinking, orjson.dumps(thinking)[1:-1])
        if content:
            self._append(self._content, orjson.dumps(content)[1:-1])
        for call in calls:
            rendered = orjson.dumps(call)
            self._append(self._calls, b"," + rendered if self._calls else rendered)
        if obj.get("done") is True:
            self.finish_reason = finish_reason(obj.get("done_reason"), bool(self._calls))
            self.prompt_tokens, self.completion_tokens = usage_counts(obj)
            self.done = True

    def _append(self, buf: bytearray, data: bytes) -> None:
        self._keep(len(data))
        buf += data
