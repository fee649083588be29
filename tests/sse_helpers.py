"""Builders for the re-framer tests: Ollama /api/chat lines written the way Go's
json.Marshal writes them (an escaper of our own, not orjson), a minimal strict SSE parser
of our own, and Hypothesis strategies for streams of such lines."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from clawproxy.openai.reframe import SseReframer

CID = "chatcmpl-test1"
CREATED = 1755800904
MODEL = "qwen3:8b"
DONE = "[DONE]"

_GO_SHORT = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b"}
_GO_SHORT |= {"\f": "\\f", "<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}
_GO_SHORT |= {"\u2028": "\\u2028", "\u2029": "\\u2029"}


def go_quote(text: str) -> str:
    """A JSON string as Go's json.Marshal writes it (PROTOCOL 2)."""
    out = []
    for ch in text:
        if ch in _GO_SHORT:
            out.append(_GO_SHORT[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def go_json(value: Any) -> str:
    """Compact JSON in Go's style, keeping dict order (Ollama keeps argument order)."""
    if isinstance(value, str):
        return go_quote(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ",".join(go_quote(k) + ":" + go_json(v) for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(go_json(v) for v in value) + "]"
    return "null" if value is None else str(value)


def chat_line(
    content: str = "",
    *,
    thinking: str = "",
    tool_calls: list[dict[str, Any]] | None = None,
    done: bool = False,
    **extra: Any,
) -> bytes:
    """One /api/chat line in Ollama's field order, newline included."""
    msg: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        msg["thinking"] = thinking
    if tool_calls:
        msg["tool_calls"] = tool_calls
    obj: dict[str, Any] = {
        "model": MODEL,
        "created_at": "2026-08-21T18:48:22.184789Z",
        "message": msg,
    }
    obj["done"] = done
    obj.update(extra)
    return (go_json(obj) + "\n").encode()


def done_line(reason: str | None = "stop", **extra: Any) -> bytes:
    if reason is not None:
        extra = {"done_reason": reason, **extra}
    return chat_line(done=True, **extra)


def parse_sse(raw: bytes) -> list[Any]:
    """Events as JSON values ([DONE] as the string), insisting on strict framing."""
    if not raw:
        return []
    assert raw.endswith(b"\n\n"), raw[-40:]
    events = []
    for block in raw[:-2].split(b"\n\n"):
        assert b"\n" not in block and b"\r" not in block, block
        assert block.startswith(b"data: "), block
        data = block[len(b"data: ") :].decode()
        events.append(DONE if data == DONE else json.loads(data))
    return events


def new(include_usage: bool = False, **kw: Any) -> SseReframer:
    return SseReframer(
        completion_id=CID, created=CREATED, model=MODEL, include_usage=include_usage, **kw
    )


def run(*reads: bytes, include_usage: bool = False, eof: bool = True) -> tuple[list[Any], Any]:
    r = new(include_usage)
    raw = b"".join(r.feed(d) for d in reads) + (r.eof() if eof else b"")
    return parse_sse(raw), r


def deltas(events: list[Any]) -> list[dict[str, Any]]:
    return [e["choices"][0]["delta"] for e in events if isinstance(e, dict) and e.get("choices")]


def text(events: list[Any], key: str = "content") -> str:
    return "".join(d.get(key, "") for d in deltas(events))


NASTY = [
    'say "hi" \\ back\\slash',
    "<script>&amp;</script>",
    "line1\nline2\r\nline3\ttab\b\f\x00\x1f\x7f",
    "日本語のテキスト, 🦀🎉 emoji",
    "sep\u2028para\u2029next\x85",
    "\n\ndata: [DONE]\n\n",
    "ends with backslash \\",
    '","thinking":"fake',
]


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({p % (len(data) + 1) for p in points})
    return [data[a:b] for a, b in zip([0, *edges], [*edges, len(data)], strict=True)]


text_st = st.text(st.characters(codec="utf-8"), max_size=12)
line_st = st.one_of(
    text_st.map(chat_line),
    text_st.map(lambda t: chat_line("", thinking=t)),
    st.tuples(text_st, text_st).map(lambda p: chat_line(p[0], thinking=p[1])),
    text_st.map(lambda n: chat_line(tool_calls=[{"id": "c1", "function": {"name": n}}])),
)
