"""Re-frame Ollama's ``/api/chat`` NDJSON stream as OpenAI ``chat.completion.chunk`` SSE.

Theory of operation: the caller owns the sockets. For every read from Ollama it calls
``feed(data)`` and writes the returned bytes to the client in one write (they may be
empty); when the upstream body ends it calls ``eof()``, and on a timeout or reset it calls
``fail()``. Every returned byte string is a whole number of SSE events, so a write never
leaves a half event on the wire.

Output, per PROTOCOL 4.5: a role chunk when the first line arrives, then one chunk per
content, reasoning (``reasoning_content``) or tool-call delta, and on Ollama's done line a
finish chunk, the usage chunk when asked for, and ``data: [DONE]``. A failure of any kind
(an in-band ``{"error": ...}`` line, an undecodable or over-long line, a cut stream, an
outside failure) ends the stream with one OpenAI error event and no ``[DONE]``, so
openai-python raises ``APIError`` instead of returning a silently truncated answer (4.4).

The hot path is a line holding only content (or only thinking). Its JSON string is already
escaped exactly as the output needs it, so it is spliced between two pre-rendered byte
strings without decoding: one regex match per line (``ndjson.FAST_LINE``, which proves the
line is exactly that shape), no dicts, no ``orjson``. A read that is one such line, the
usual case since Ollama flushes per token, does not even enter the line loop. Anything else
takes the general path: decode, build the delta, encode. Both paths give the same decoded
value; the tests hold them to it. Lines are split inline rather than through
``ndjson.LineSplitter`` to save a call and a list per read; the rules (bounded partial line,
cap on every line, tolerated trailing ``\\r``) are the same and tested on both.
"""

from __future__ import annotations

import orjson

from clawproxy import errors
from clawproxy.http.chunked import chunk_fits, one_chunk_pattern
from clawproxy.ollama.ndjson import (
    CODE_UPSTREAM_BROKEN,
    CODE_UPSTREAM_ERROR,
    DEFAULT_MAX_LINE_BYTES,
    FAST_LINE,
    FAST_READ,
    FAST_READ_PATTERN,
    MSG_STREAM_CUT,
    InvalidLine,
    LineTooLong,
    finish_reason,
    line_error,
    message_parts,
    parse_line,
    usage_counts,
)

_DONE_EVENT = b"data: [DONE]\n\n"
# ``openai.reasoning_field``: the delta/message keys reasoning text goes under.
REASONING_KEYS: dict[str, tuple[bytes, bytes | None]] = {
    "reasoning_content": (b"reasoning_content", None),
    "reasoning": (b"reasoning", None),
    "both": (b"reasoning_content", b"reasoning"),
}


def reasoning_keys(field: str) -> tuple[bytes, bytes | None]:
    """The key reasoning goes under first, and the second one for "both"."""
    return REASONING_KEYS[field]


_fast_read = FAST_READ.fullmatch
_fast_line = FAST_LINE.match
# A raw upstream read that is one whole HTTP chunk holding one such line (groups: size, data,
# content, thinking): chunk and line checked in one regex pass (see feed_chunk).
_fast_chunk = one_chunk_pattern(FAST_READ_PATTERN).fullmatch
_CHUNK_TAIL = b',"finish_reason":null}]}\n\n'


def error_event(message: str, code: str) -> bytes:
    """One SSE event carrying an OpenAI error object (openai-python raises ``APIError``)."""
    return b"data: " + errors.error_body(message, "api_error", None, code) + b"\n\n"


def chunk_prefix(completion_id: str, created: int, model: str) -> bytes:
    """A ``chat.completion.chunk`` SSE event up to its ``choices`` list, rendered once per
    stream (the same for every chunk of it)."""
    return (
        b'data: {"id":'
        + orjson.dumps(completion_id)
        + b',"object":"chat.completion.chunk","created":'
        + orjson.dumps(created)
        + b',"model":'
        + orjson.dumps(model)
        + b',"choices":['
    )


class SseReframer:
    """Turn one Ollama chat stream into the SSE body for one OpenAI streaming response.

    Public state, for the caller and for metrics: ``done`` (the done line was seen and
    ``[DONE]`` emitted), ``error`` (the failure message once failed), ``deltas`` (content,
    reasoning and tool-call deltas emitted), ``prompt_tokens``, ``completion_tokens``,
    ``finish_reason`` and ``extra_after_done`` (bytes followed the done line, so that
    upstream connection must not be reused).
    """

    __slots__ = (
        "_buf",
        "_clean",
        "_closed",
        "_content_post",
        "_content_pre",
        "_delta_pre",
        "_include_usage",
        "_max_line",
        "_max_read",
        "_reasoning_pre",
        "_reasoning_twice",
        "_role_event",
        "_started",
        "_stream_pre",
        "_tool_index",
        "completion_tokens",
        "deltas",
        "done",
        "error",
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
        include_usage: bool,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        reasoning_field: str = "reasoning_content",
    ) -> None:
        # Rendered once per stream: everything a chunk has before its delta and after it.
        self._stream_pre = chunk_prefix(completion_id, created, model)
        self._delta_pre = self._stream_pre + b'{"index":0,"delta":'
        self._content_pre = self._delta_pre + b'{"content":'
        # Reasoning under the configured name(s) (``openai.reasoning_field``); with "both",
        # the escaped text is spliced twice: X,"reasoning":X.
        first, twice = reasoning_keys(reasoning_field)
        self._reasoning_pre = self._delta_pre + b'{"' + first + b'":'
        self._reasoning_twice = None if twice is None else b',"' + twice + b'":'
        self._content_post = b"}" + _CHUNK_TAIL
        self._role_event = self._delta_pre + b'{"role":"assistant","content":""}' + _CHUNK_TAIL
        self._include_usage = include_usage
        self._max_line = max_line_bytes
        # A read holding one whole line of the maximum length, plus its newline.
        self._max_read = max_line_bytes + 1
        self._buf = bytearray()
        self._started = False
        # Started, not finished, nothing buffered: the one-line fast case of feed() applies.
        self._clean = False
        # Done or failed: later input is ignored, and eof()/fail() say nothing more.
        self._closed = False
        self._tool_index = 0
        self.done = False
        self.error: str | None = None
        self.deltas = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.extra_after_done = False

    def feed(self, data: bytes) -> bytes:
        """All SSE bytes produced by one upstream read, joined (possibly ``b""``)."""
        # Ollama flushes once per token, so most reads are exactly one content-only line.
        # That case costs one regex call and one concatenation; all else goes to _feed().
        if self._clean and len(data) <= self._max_read:
            m = _fast_read(data)
            if m is not None:
                text = m.group(1)
                if text is not None:
                    pre = self._content_pre
                else:
                    text = m.group(2)
                    pre = self._reasoning_pre
                    if self._reasoning_twice is not None and len(text) > 2:
                        text = text + self._reasoning_twice + text
                # b'""' is an empty token: Ollama sends these; the client needs nothing.
                if len(text) == 2:
                    return b""
                self.deltas += 1
                return pre + text + self._content_post
        return self._feed(data)

    def feed_chunk(self, raw: bytes) -> bytes | None:
        """``feed()`` for a raw chunked read, or None to say "decode it and call feed()".

        The one-token read from Ollama is one whole chunk holding one content-only line.
        Checking chunk and line in one regex, and splicing straight from the raw read,
        skips the decoder's work and a copy per token. Only that exact case is taken:
        anything else (another line, a partial chunk, several) returns None untouched.
        The caller must know the read starts at a chunk boundary.
        """
        first = False
        if not self._clean:
            # The stream's first line may come this way too (the first token, on the
            # first-token path), behind the role event; a buffered partial line may not.
            if self._started or self._closed or self._buf:
                return None
            first = True
        m = _fast_chunk(raw)
        if m is None or not chunk_fits(m) or m.end(2) - m.start(2) > self._max_read:
            return None
        lead = b""
        if first:
            self._started = self._clean = True
            lead = self._role_event
        text = m[3]
        if text is not None:
            pre = self._content_pre
        else:
            text = m[4]
            pre = self._reasoning_pre
            if self._reasoning_twice is not None and len(text) > 2:
                text = text + self._reasoning_twice + text
        if len(text) == 2:
            return lead
        self.deltas += 1
        return lead + pre + text + self._content_post

    def _feed(self, data: bytes) -> bytes:
        """The general case of ``feed``: any number of lines, any of them partial."""
        if self._closed:
            if data and self.done:
                self.extra_after_done = True
            return b""
        buf = self._buf
        limit = self._max_line
        # split() scans only the new bytes; the buffered tail is known to hold no newline.
        lines = data.split(b"\n")
        tail = lines.pop()
        if not lines:
            self._clean = False
            if len(buf) + len(tail) > limit:
                return self._fail(LineTooLong(limit), CODE_UPSTREAM_BROKEN)
            buf += tail
            return b""
        if buf:
            buf += lines[0]
            lines[0] = bytes(buf)
            buf.clear()
        # A line can exceed the cap only if the read (or the completed first line) does, so
        # the common read pays nothing per line. Lines before the long one are still
        # rendered, as they would be had the reads been cut differently.
        too_long = len(tail) > limit
        if len(data) > limit or len(lines[0]) > limit:
            for i, line in enumerate(lines):
                if len(line) > limit:
                    del lines[i:]
                    too_long = True
                    break
        if self._started:
            out: list[bytes] = []
        else:
            out = [self._role_event]
            self._started = True
        match = _fast_line
        content_pre = self._content_pre
        reasoning_pre = self._reasoning_pre
        post = self._content_post
        fast = 0
        for line in lines:
            m = match(line)
            if m is not None:
                text = m.group(1)
                pre = content_pre
                if text is None:
                    text = m.group(2)
                    pre = reasoning_pre
                    if self._reasoning_twice is not None and len(text) > 2:
                        text = text + self._reasoning_twice + text
                # b'""' is an empty token: Ollama sends these; the client needs nothing.
                if len(text) > 2:
                    out += (pre, text, post)
                    fast += 1
            elif self._general_line(line, out):
                break
        self.deltas += fast
        if self._closed:
            # Bytes after the done line: the caller must not reuse that connection. An
            # equal line earlier would have ended the stream too, so index() finds this one.
            if self.done and (too_long or tail or lines.index(line) < len(lines) - 1):
                self.extra_after_done = True
        elif too_long:
            out.append(self._fail(LineTooLong(limit), CODE_UPSTREAM_BROKEN))
        else:
            buf += tail
            self._clean = not buf
        return b"".join(out)

    def eof(self) -> bytes:
        """The upstream body ended: ``b""`` after the done line, else an error event."""
        if self._closed:
            return b""
        return self._fail(MSG_STREAM_CUT, CODE_UPSTREAM_BROKEN)

    def fail(self, message: str, code: str) -> bytes:
        """An outside failure (timeout, reset): an error event, unless already finished."""
        if self._closed:
            return b""
        return self._fail(message, code)

    def _fail(self, reason: str | ValueError, code: str) -> bytes:
        message = str(reason)
        self.error = message
        self._closed = True
        self._clean = False
        self._buf.clear()
        return error_event(message, code)

    def _general_line(self, line: bytes, out: list[bytes]) -> bool:
        """Render any line the fast path declined; True when it ended the stream."""
        if not line or line == b"\r":
            # Tolerated: a blank line carries nothing, and Ollama never sends one.
            return False
        try:
            obj = parse_line(line)
            err = line_error(obj)
            if err is not None:
                out.append(self._fail(err, CODE_UPSTREAM_ERROR))
                return True
            content, thinking, calls = message_parts(obj)
        except InvalidLine as exc:
            out.append(self._fail(exc, CODE_UPSTREAM_BROKEN))
            return True
        # Reasoning first, in its own chunk, as Ollama's own /v1 layer does (PROTOCOL 3.3).
        if thinking:
            text = orjson.dumps(thinking)
            if self._reasoning_twice is not None:
                text = text + self._reasoning_twice + text
            out += (self._reasoning_pre, text, self._content_post)
            self.deltas += 1
        if content:
            out += (self._content_pre, orjson.dumps(content), self._content_post)
            self.deltas += 1
        for call in calls:
            indexed = {"index": self._tool_index, **call}
            self._tool_index += 1
            out.append(self._delta_pre + orjson.dumps({"tool_calls": [indexed]}) + _CHUNK_TAIL)
            self.deltas += 1
        if obj.get("done") is not True:
            return False
        self._finish(obj, out)
        return True

    def _finish(self, obj: dict[str, object], out: list[bytes]) -> None:
        reason = finish_reason(obj.get("done_reason"), self._tool_index > 0)
        prompt, completion = usage_counts(obj)
        self.finish_reason = reason
        self.prompt_tokens = prompt
        self.completion_tokens = completion
        out.append(self._delta_pre + b'{},"finish_reason":"' + reason.encode() + b'"}]}\n\n')
        if self._include_usage:
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
            out.append(self._stream_pre + b'],"usage":' + orjson.dumps(usage) + b"}\n\n")
        out.append(_DONE_EVENT)
        self.done = True
        self._closed = True
        self._clean = False
