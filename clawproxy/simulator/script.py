"""What the simulator says: replies, fault modes and the scripts that choose them.

Theory of operation: for every generation request (``/api/chat`` with messages,
``/api/generate`` with a prompt) the simulator asks a *script* for a ``Reply``. A script is
any callable from the request dict to a ``Reply``; it runs synchronously before the first
byte is written, so what a test wants is decided up front and the streaming code only
replays it. The request dict is the parsed JSON body as Ollama's handler sees it after its
own defaults, i.e. ``think`` is already ``True`` when the model can think and the client
left it out.

A ``Reply`` carries its own ``Fault`` so one script can break request 3 and serve request 4
normally. ``Fault`` is a flat, frozen bag of switches (RELIABILITY Appendix A); most combine
(``byte_by_byte`` with ``reset_after``, ``first_delay`` with anything). ``Fault.parse``
reads the ``name=value,flag`` form used on the command line and in the ``X-Sim-Fault``
request header.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_type_hints

__all__ = [
    "DEFAULT_ERROR_MESSAGE",
    "Fault",
    "Reply",
    "Script",
    "demo_script",
    "num_predict",
    "numbered_script",
    "split_words",
    "tool_call",
]

# The text Ollama streams when the runner fails after the first byte (docs/api/errors.mdx).
DEFAULT_ERROR_MESSAGE = "an error was encountered while running the model"
# What ``extra_after_done`` appends: a plausible line, so a lenient parser would act on it.
DEFAULT_EXTRA_BYTES = b'{"model":"extra","created_at":"2026-01-01T00:00:00Z","done":false}\n'
NUMBERED_DEFAULT_TOKENS = 100


@dataclass(frozen=True, slots=True)
class Fault:
    """Ways to misbehave, all off by default. Token counts K count lines before ``done``.

    A K larger than the reply triggers just before the done line.
    """

    # Read the request, never answer (not even headers).
    blackhole: bool = False
    # Seconds of model-load emulation before anything is written (overrides the server's).
    first_delay: float | None = None
    # Seconds between single-byte writes of the response head.
    slow_headers: float | None = None
    # Answer with this status before any stream; ``body`` defaults to ``{"error":...}``.
    status: int | None = None
    body: bytes | None = None
    content_type: str = "application/json; charset=utf-8"
    # Answer 302 with this Location.
    redirect: str | None = None
    # Answer an SSH greeting instead of HTTP, then close.
    garbage: bool = False
    # K tokens, then silence with the connection left open.
    stall_after: int | None = None
    # K tokens, then close with SO_LINGER(1, 0) so the peer gets an RST.
    reset_after: int | None = None
    # K tokens, then a clean FIN without the terminating 0-chunk.
    truncate_chunked: int | None = None
    # With ``truncate_chunked``: stop halfway through the next chunk instead of between chunks.
    truncate_mid_chunk: bool = False
    # A clean chunked end with no ``"done":true`` line.
    eof_no_done: bool = False
    # K tokens, then ``{"error": error_message}`` and a clean end of the body.
    error_line_after: int | None = None
    error_message: str = DEFAULT_ERROR_MESSAGE
    # One line of this many bytes with no newline, then silence.
    giant_line: int | None = None
    # Non-stream framing whose Content-Length promises more than is sent, then close.
    short_body: bool = False
    # After the done line, more body bytes (``extra_bytes``) before the end.
    extra_after_done: bool = False
    extra_bytes: bytes = DEFAULT_EXTRA_BYTES
    # Every body byte its own chunk and its own write.
    byte_by_byte: bool = False
    # N lines per chunk (one write).
    coalesce: int | None = None
    # Every write cut into N pieces at pseudo-random points (``seed``), header bytes included.
    split_writes: int | None = None
    seed: int = 0
    # Ignore pacing and never finish: filler tokens until the client leaves.
    flood: bool = False
    # Seconds between the done line and the last chunk (Go writes the 0-chunk when the
    # handler returns, in its own write after the last flush).
    end_delay: float | None = None
    # Close the keep-alive connection after this many idle seconds following the response.
    close_idle_after: float | None = None
    # With ``format`` in the request: valid JSON that does not match it (see formats).
    bad_format: bool = False

    @property
    def break_after(self) -> int | None:
        """The token count at which the stream breaks off, if any."""
        for value in (
            self.stall_after,
            self.reset_after,
            self.truncate_chunked,
            self.error_line_after,
        ):
            if value is not None:
                return value
        return None

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """Build a Fault from ``"stall_after=5,byte_by_byte"`` (commas or spaces).

        Flags may stand alone; every other field needs ``=value``. Raises ``ValueError``.
        """
        kinds = _field_kinds()
        values: dict[str, Any] = {}
        for item in spec.replace(",", " ").split():
            name, has_value, raw = item.partition("=")
            kind = kinds.get(name)
            if kind is None:
                raise ValueError(f"unknown fault {name!r}")
            if not has_value:
                if kind is not bool:
                    raise ValueError(f"fault {name!r} needs a value")
                values[name] = True
            elif kind is bool:
                values[name] = raw.lower() in ("1", "true", "yes", "on")
            elif kind is bytes:
                values[name] = raw.encode()
            else:
                values[name] = kind(raw)
        return cls(**values)


def _field_kinds() -> dict[str, type]:
    hints = get_type_hints(Fault)
    kinds: dict[str, type] = {}
    for item in dataclasses.fields(Fault):
        hint = hints[item.name]
        for candidate in (bool, int, float, bytes, str):
            if hint is candidate or candidate in getattr(hint, "__args__", ()):
                kinds[item.name] = candidate
                break
    return kinds


@dataclass(slots=True)
class Reply:
    """One generation: the pieces to stream and how it ends.

    ``tokens`` and ``thinking`` are streamed one line each (thinking first). ``tool_calls``
    are Ollama-shaped (see ``tool_call``) and sent whole in one line before the done line
    (on ``/api/generate``: on the done line). ``done_content`` is text carried by the done
    line itself, which real servers sometimes do. Counts left ``None`` are derived.
    """

    tokens: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    done_reason: str = "stop"
    done_content: str = ""
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    fault: Fault | None = None

    @classmethod
    def from_text(cls, text: str, **kwargs: Any) -> Reply:
        """A reply streaming ``text`` in word-sized pieces (see ``split_words``)."""
        return cls(tokens=split_words(text), **kwargs)


Script = Callable[[dict[str, Any]], Reply]


def split_words(text: str) -> list[str]:
    """Cut text into word pieces that keep their leading space, as tokenizers do.

    ``"".join(split_words(t)) == t`` for every string.
    """
    pieces: list[str] = []
    start = 0
    for index in range(1, len(text)):
        if text[index] == " " and text[index - 1] != " ":
            pieces.append(text[start:index])
            start = index
    if text:
        pieces.append(text[start:])
    return pieces


def tool_call(
    name: str, arguments: dict[str, Any], *, index: int = 0, call_id: str | None = None
) -> dict[str, Any]:
    """One tool call in Ollama's shape: ``{"id","function":{"index","name","arguments"}}``.

    Without ``call_id`` the id is ``call_`` plus 8 characters derived from name and index,
    so replays are deterministic.
    """
    if call_id is None:
        digest = hashlib.sha256(f"{name}/{index}".encode()).hexdigest()
        call_id = "call_" + digest[:8]
    return {"id": call_id, "function": {"index": index, "name": name, "arguments": arguments}}


def num_predict(request: dict[str, Any]) -> int | None:
    """``options.num_predict`` when it is a positive limit; ``None`` means unlimited."""
    options = request.get("options")
    if not isinstance(options, dict):
        return None
    value = options.get("num_predict")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if value > 0 else None


def _last_user_text(request: dict[str, Any]) -> str:
    messages = request.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                return content if isinstance(content, str) else ""
        return ""
    prompt = request.get("prompt")
    return prompt if isinstance(prompt, str) else ""


_DEMO_QUOTE_WORDS = 12
_DEMO_THINKING = (
    "The user wants an answer. I am only the demo model, so I will greet them, repeat"
    " what they said, and explain how to get a real reply."
)


def demo_script(request: dict[str, Any]) -> Reply:
    """A friendly, deterministic reply of about 50 word pieces echoing the last user turn.

    Thinks first when ``think`` is on; stops with ``"length"`` at ``options.num_predict``
    (thinking counts against the limit, as on a real server).
    """
    words = _last_user_text(request).split()
    quote = " ".join(words[:_DEMO_QUOTE_WORDS]) + (" ..." if len(words) > _DEMO_QUOTE_WORDS else "")
    said = f'You said: "{quote}".' if quote else "You did not say anything yet."
    text = (
        "Hello! I am the clawproxy demo model, a small stand-in for Ollama that lives inside"
        f" the gateway. {said} A real model would answer that properly; I can only stream"
        " these words one token at a time, so you can watch the gateway at work. Point"
        " clawproxy at a running Ollama to get real answers."
    )
    thinking = split_words(_DEMO_THINKING) if request.get("think") not in (None, False) else []
    tokens = split_words(text)
    limit = num_predict(request)
    done_reason = "stop"
    if limit is not None and len(thinking) + len(tokens) > limit:
        thinking = thinking[:limit]
        tokens = tokens[: limit - len(thinking)]
        done_reason = "length"
    return Reply(tokens=tokens, thinking=thinking, done_reason=done_reason)


def numbered_script(default_tokens: int = NUMBERED_DEFAULT_TOKENS) -> Script:
    """A script for exactness checks and benchmarks: ``" t0001"``, ``" t0002"``, ...

    The count is ``options.num_predict`` (ending with ``"length"``, as the limit is hit) or
    ``default_tokens`` (ending with ``"stop"``). Pieces widen past 9999 rather than wrap.
    """

    def script(request: dict[str, Any]) -> Reply:
        limit = num_predict(request)
        count = default_tokens if limit is None else limit
        tokens = [f" t{index:04d}" for index in range(1, count + 1)]
        return Reply(tokens=tokens, done_reason="stop" if limit is None else "length")

    return script
