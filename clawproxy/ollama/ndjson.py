"""Ollama's ``/api/chat`` NDJSON stream: bounded line splitting and the meaning of one line.

Theory of operation: Ollama writes one compact JSON object per line and flushes after each,
but TCP and proxies may merge or split lines, so bytes are buffered until a ``b"\\n"``.
Splitting happens on bytes, never on decoded text: ``str.splitlines`` would also split on
U+2028, U+2029 and U+0085, which JSON allows raw inside strings (PROTOCOL 2, RELIABILITY 1.6).
A partial line is capped, so a peer that never sends a newline costs at most that much memory.

Everything both consumers of the stream need to agree on lives here, in one place: the
shape of a content-only or thinking-only line that may skip JSON decoding (``FAST_LINE``),
decoding a line into its parts, the tool-call conversion, the ``finish_reason`` rule and
the usage counts.
``reframe.SseReframer`` (streaming clients) and ``aggregate.ChatAccumulator`` (non-streaming
clients) are the two consumers; neither re-implements these rules.

Pure code: no I/O, no clock. Errors are ``ValueError`` subclasses carrying a message that is
safe to show a client, because it never quotes the offending bytes.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import orjson

from clawproxy import errors

# A generated answer can carry a big tool-call argument or a long final content flush on
# one line; 1 MiB is far above any single token line and still a small, fixed cost per stream.
DEFAULT_MAX_LINE_BYTES = 1 << 20

# Messages shown to the client. None quotes the upstream bytes: garbage is never reflected.
MSG_INVALID_LINE = "upstream sent an invalid stream line"
MSG_STREAM_CUT = "upstream ended the stream before it was complete"
MSG_UPSTREAM_ERROR = "upstream reported an error"

# Error codes for the client: Ollama said it failed, versus its stream was unusable.
CODE_UPSTREAM_ERROR: str = errors.UpstreamFailed.default_code or "upstream_error"
CODE_UPSTREAM_BROKEN: str = errors.UpstreamUnavailable.default_code or "upstream_unavailable"

# What Go's json.Marshal writes for a chat line whose message holds only content, or only
# thinking (PROTOCOL 1.2: fields in declaration order, compact, ``thinking`` and
# ``tool_calls`` omitted when empty, ``content`` always present). Group 1 is the content,
# group 2 the thinking, as a quoted JSON string ready to splice into output unchanged.
#
# The pattern is a complete grammar for that one shape, anchored at the line's first byte,
# so a match proves the line is a JSON object with exactly these members: no ``error``, no
# ``done: true``, no field hiding behind the text. Text inside a string cannot pass for
# structure: in JSON every ``"`` inside a string is backslash-escaped, so the raw quotes of
# ``"message":{"role":"assistant","content":"`` can only be real delimiters. Prefix values
# (model, created_at, the remote_* pair) are plain strings without escapes, as Ollama
# writes them. The text groups are the JSON string grammar (RFC 8259 section 7) as an
# "unrolled loop" with possessive repeats, so a failed match costs one pass: an escaped
# quote is part of the text, a raw quote ends it, raw control bytes (CR included) never
# match. So nothing spliced can end an SSE line, and orjson would decode the same text.
# Trusted, not checked, because checking costs more than the rest of the match: bytes
# >= 0x80 are not validated as UTF-8 (Go writes U+FFFD for invalid UTF-8).
_PLAIN = rb'"[^"\\\x00-\x1f]*+"'
_JSON_STRING = rb'"[^"\\\x00-\x1f]*+(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*+)*+"'
_FAST_SHAPE = (
    rb'\{"model":' + _PLAIN + rb'(?:,"(?:remote_model|remote_host|created_at)":' + _PLAIN + rb")*+"
    rb',"message":\{"role":"assistant","content":'
    rb"(?:(" + _JSON_STRING + rb')|"","thinking":(' + _JSON_STRING + rb"))"
    rb'\},"done":false\}\r?'
)
# ``FAST_LINE.match(line)`` for one line without its newline.
FAST_LINE = re.compile(_FAST_SHAPE + rb"\Z")
# ``FAST_READ.fullmatch(data)``: is a whole read exactly one such line and its newline?
FAST_READ_PATTERN = _FAST_SHAPE + rb"\n"
FAST_READ = re.compile(FAST_READ_PATTERN)


class LineTooLong(ValueError):
    """A line (complete or still partial) is longer than the splitter's cap."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"upstream line exceeded {limit} bytes")
        self.limit = limit


class InvalidLine(ValueError):
    """A line is not a JSON object, or a field has the wrong type."""

    def __init__(self) -> None:
        super().__init__(MSG_INVALID_LINE)


class LineSplitter:
    """Split a byte stream into ``b"\\n"``-terminated lines, holding at most one partial line.

    A line, counted with a trailing ``b"\\r"`` if any, may be ``max_line_bytes`` long; a
    longer one raises ``LineTooLong`` as soon as its buffered part exceeds the cap, whichever
    way the reads cut it. After that the splitter is spent: the stream cannot be resynced.
    """

    __slots__ = ("_buf", "max_line_bytes")

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of the current partial line held in the buffer."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Return the lines completed by ``data``, in order, without ``\\n`` or ``\\r\\n``."""
        # split() scans only the new bytes; the buffered tail is known to hold no newline.
        lines = data.split(b"\n")
        tail = lines.pop()
        buf = self._buf
        limit = self.max_line_bytes
        if lines:
            if buf:
                buf += lines[0]
                lines[0] = bytes(buf)
                buf.clear()
            for i, line in enumerate(lines):
                if len(line) > limit:
                    raise LineTooLong(limit)
                if line.endswith(b"\r"):
                    lines[i] = line[:-1]
        if len(buf) + len(tail) > limit:
            raise LineTooLong(limit)
        buf += tail
        return lines


def parse_line(line: bytes) -> dict[str, Any]:
    """Decode one line into a JSON object, or raise ``InvalidLine``."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise InvalidLine() from None
    if type(obj) is not dict:
        raise InvalidLine()
    return obj


def line_error(obj: dict[str, Any]) -> str | None:
    """The upstream error message if this is an ``{"error": ...}`` line, else ``None``.

    Any line with an ``error`` key is a failure, as in Ollama's own Go client (PROTOCOL 1.8).
    """
    err = obj.get("error")
    if err is None:
        return None
    return err if type(err) is str and err else MSG_UPSTREAM_ERROR


def message_parts(obj: dict[str, Any]) -> tuple[str, str, list[dict[str, Any]]]:
    """Content, thinking and converted tool calls of a chat line (empty when absent)."""
    msg = obj.get("message")
    if msg is None:
        return "", "", []
    if type(msg) is not dict:
        raise InvalidLine()
    content = msg.get("content") or ""
    thinking = msg.get("thinking") or ""
    if type(content) is not str or type(thinking) is not str:
        raise InvalidLine()
    raw_calls = msg.get("tool_calls")
    if not raw_calls:
        return content, thinking, []
    if type(raw_calls) is not list:
        raise InvalidLine()
    return content, thinking, [convert_tool_call(call) for call in raw_calls]


def convert_tool_call(call: object) -> dict[str, Any]:
    """Turn one Ollama tool call into OpenAI's shape, without the streaming ``index``.

    Ollama sends a call whole with ``arguments`` as a JSON object; OpenAI wants it as a JSON
    string. Ollama's own ``function.index`` restarts at 0 for parallel calls, so it is dropped
    and the caller numbers calls itself (PROTOCOL 5, pitfall 2). Servers before ~v0.12.10
    sent no ``id``; one is minted in OpenAI's ``call_`` style.
    """
    if type(call) is not dict:
        raise InvalidLine()
    fn = call.get("function")
    if type(fn) is not dict:
        raise InvalidLine()
    name = fn.get("name")
    if type(name) is not str:
        raise InvalidLine()
    args = fn.get("arguments")
    if args is None:
        arguments = "{}"
    elif type(args) is str:
        arguments = args
    else:
        arguments = orjson.dumps(args).decode()
    call_id = call.get("id")
    if type(call_id) is not str or not call_id:
        call_id = "call_" + secrets.token_hex(12)
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def finish_reason(done_reason: object, had_tool_calls: bool) -> str:
    """OpenAI's ``finish_reason`` for a done line (PROTOCOL 1.4 and 4.5).

    ``length`` wins, so a client never runs a tool call that was cut off mid-generation;
    Ollama itself never says ``tool_calls``; a missing reason means ``stop``.
    """
    if done_reason == "length":
        return "length"
    return "tool_calls" if had_tool_calls else "stop"


def usage_counts(obj: dict[str, Any]) -> tuple[int, int]:
    """``(prompt_tokens, completion_tokens)`` of a done line; absent counts are 0.

    Go omits zero metrics (``omitempty``), so absence is normal, not an error.
    """
    prompt = obj.get("prompt_eval_count")
    completion = obj.get("eval_count")
    return (
        prompt if type(prompt) is int and prompt > 0 else 0,
        completion if type(completion) is int and completion > 0 else 0,
    )
