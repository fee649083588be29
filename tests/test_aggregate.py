"""ChatAccumulator: the non-streaming answer, and its agreement with the streamed one."""

from __future__ import annotations

import contextlib
import json
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sse_helpers import (
    CID,
    CREATED,
    MODEL,
    NASTY,
    chat_line,
    cut,
    deltas,
    done_line,
    go_quote,
    run,
)

from clawproxy.errors import UpstreamFailed
from clawproxy.openai.aggregate import ChatAccumulator


def new(**kw: Any) -> ChatAccumulator:
    return ChatAccumulator(completion_id=CID, created=CREATED, model=MODEL, **kw)


def collect(*reads: bytes, **kw: Any) -> tuple[dict[str, Any], ChatAccumulator]:
    acc = new(**kw)
    for data in reads:
        acc.feed(data)
    return json.loads(acc.result()), acc


def test_body_shape_and_values() -> None:
    body, acc = collect(
        chat_line("Hello"), chat_line(", world"), done_line(prompt_eval_count=7, eval_count=2)
    )
    assert list(body) == ["id", "object", "created", "model", "choices", "usage"]
    assert (body["id"], body["object"], body["created"], body["model"]) == (
        CID,
        "chat.completion",
        CREATED,
        MODEL,
    )
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello, world"},
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    assert acc.done and not acc.extra_after_done and acc.finish_reason == "stop"


def test_nasty_content_whole_and_byte_by_byte() -> None:
    stream = b"".join(chat_line(t) for t in NASTY) + done_line()
    whole, _ = collect(stream)
    single, _ = collect(*(stream[i : i + 1] for i in range(len(stream))))
    assert whole["choices"][0]["message"]["content"] == "".join(NASTY)
    assert single == whole


def test_reasoning_only_when_present_and_tool_calls_without_index() -> None:
    calls: list[dict[str, Any]] = [
        {"id": "call_a", "function": {"index": 0, "name": "get", "arguments": {"city": "<T>"}}},
        {"function": {"index": 0, "name": "put", "arguments": {}}},
    ]
    body, _ = collect(
        chat_line("", thinking="hmm "),
        chat_line("", thinking="ok"),
        chat_line("x", tool_calls=calls),
        done_line(),
    )
    msg = body["choices"][0]["message"]
    assert msg["content"] == "x" and msg["reasoning_content"] == "hmm ok"
    assert [list(c) for c in msg["tool_calls"]] == [["id", "type", "function"]] * 2
    assert msg["tool_calls"][0]["id"] == "call_a"
    assert msg["tool_calls"][1]["id"].startswith("call_")
    assert json.loads(msg["tool_calls"][0]["function"]["arguments"]) == {"city": "<T>"}
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    plain, _ = collect(chat_line("x"), done_line())
    assert list(plain["choices"][0]["message"]) == ["role", "content"]


def test_length_is_never_turned_into_tool_calls() -> None:
    tc = [{"function": {"name": "f", "arguments": {}}}]
    body, _ = collect(chat_line(tool_calls=tc), done_line("length"))
    assert body["choices"][0]["finish_reason"] == "length"


def test_done_line_content_is_kept() -> None:
    body, _ = collect(chat_line("a"), chat_line("b", done=True, done_reason="stop"))
    assert body["choices"][0]["message"]["content"] == "ab"


def test_error_line_raises_ollama_message_and_stays_failed() -> None:
    acc = new()
    acc.feed(chat_line("partial"))
    with pytest.raises(UpstreamFailed) as info:
        acc.feed(b'{"error":"model runner crashed"}\n')
    err = info.value
    assert err.status == 502 and err.message == "model runner crashed"
    assert json.loads(err.body())["error"]["code"] == "upstream_error"
    for action in (lambda: acc.feed(done_line()), acc.result):
        with pytest.raises(UpstreamFailed) as again:
            action()
        assert again.value.message == "model runner crashed"


@pytest.mark.parametrize("garbage", [b"SECRET{", b"[]", b'{"message":{"content":["SECRET"]}}'])
def test_invalid_line_raises_generic_message(garbage: bytes) -> None:
    acc = new()
    with pytest.raises(UpstreamFailed) as info:
        acc.feed(chat_line("a") + garbage + b"\n")
    assert info.value.message == "upstream sent an invalid stream line"
    assert b"SECRET" not in info.value.body()


def test_limits() -> None:
    acc = new(max_line_bytes=150)
    acc.feed(chat_line("ok"))
    with pytest.raises(UpstreamFailed, match="exceeded 150 bytes"):
        acc.feed(chat_line("x" * 100)[:-1])
    acc = new(max_content_bytes=10)
    acc.feed(chat_line("12345") + chat_line("", thinking="6789"))
    with pytest.raises(UpstreamFailed, match="exceeded 10 bytes"):
        acc.feed(chat_line("ab"))
    acc = new(max_content_bytes=10)
    big = [{"function": {"name": "f", "arguments": {"a": "x" * 10}}}]
    with pytest.raises(UpstreamFailed, match="exceeded 10 bytes"):
        acc.feed(chat_line(tool_calls=big))


def flood(cap: int, token: str = "abcdefgh") -> list[bytes]:
    """Content lines holding exactly ``cap`` bytes, in reads of about 64 KiB."""
    line = chat_line(token)
    count = cap // len(token)
    per_read = (64 << 10) // len(line)
    return [line * min(per_read, count - i) for i in range(0, count, per_read)]


@contextlib.contextmanager
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def test_a_flood_up_to_the_cap_holds_about_the_cap() -> None:
    # 8-byte tokens: a str per token held 8 times the text (136 MiB for 16 MiB). Allocation
    # counts, not timing, so the bound is exact on every machine.
    cap = 1 << 20
    reads = flood(cap)
    acc = new(max_content_bytes=cap)
    with traced():
        for data in reads:
            acc.feed(data)
        _, fed_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        acc.feed(done_line())
        body = acc.result()
        _, result_peak = tracemalloc.get_traced_memory()
    assert fed_peak < 1.5 * cap
    # The buffers and the body they become, nothing more.
    assert result_peak < 2.5 * cap
    assert json.loads(body)["choices"][0]["message"]["content"] == "abcdefgh" * (cap // 8)


def test_crossing_the_cap_fails_cleanly_and_gives_the_memory_back() -> None:
    cap = 1 << 20
    reads = flood(cap, "ab")
    acc = new(max_content_bytes=cap)
    with traced():
        for data in reads:
            acc.feed(data)
        held, _ = tracemalloc.get_traced_memory()
        with pytest.raises(UpstreamFailed, match=f"exceeded {cap} bytes") as info:
            acc.feed(chat_line("x", thinking="") + done_line())
        after, _ = tracemalloc.get_traced_memory()
    assert cap < held < 1.5 * cap
    assert after < cap // 8
    assert info.value.status == 502 and info.value.code == "upstream_unavailable"
    for action in (lambda: acc.feed(done_line()), acc.result):
        with pytest.raises(UpstreamFailed) as again:
            action()
        assert again.value is info.value


def test_a_flood_of_empty_tool_calls_is_bounded_by_what_is_held() -> None:
    # Counting only the arguments ("{}": 2 bytes) let each call hold ~530 bytes of dicts
    # (measured): 265 times the cap before it answered.
    cap = 256 << 10
    call = [{"id": "call_1", "function": {"name": "f", "arguments": {}}}]
    line = chat_line(tool_calls=call)
    reads = [line * 100] * (cap // 40 // 100)
    acc = new(max_content_bytes=cap)
    with traced(), pytest.raises(UpstreamFailed, match="exceeded"):
        for data in reads:
            acc.feed(data)
            _, peak = tracemalloc.get_traced_memory()
            assert peak < 1.5 * cap


def test_result_before_done_raises() -> None:
    acc = new()
    acc.feed(chat_line("half"))
    with pytest.raises(UpstreamFailed, match="before it was complete"):
        acc.result()


def test_extra_after_done() -> None:
    stream = chat_line("x") + done_line()
    for reads in ([stream + b"x"], [stream + b"\n"], [stream, b"{}\n"]):
        _, acc = collect(*reads)
        assert acc.extra_after_done
    _, clean = collect(stream[:10], stream[10:])
    assert not clean.extra_after_done


text_st = st.text(st.characters(codec="utf-8"), max_size=10)
line_st = st.one_of(
    text_st.map(chat_line),
    text_st.map(lambda t: chat_line("", thinking=t)),
    st.tuples(text_st, text_st).map(lambda p: chat_line(p[0], thinking=p[1])),
    st.tuples(text_st, st.integers(0, 9)).map(
        lambda p: chat_line(
            tool_calls=[{"id": f"c{p[1]}", "function": {"name": p[0], "arguments": {"k": p[0]}}}]
        )
    ),
)


def fold(events: list[Any]) -> dict[str, Any]:
    """What a streaming client ends up with: deltas folded into one message."""
    msg: dict[str, Any] = {"role": "assistant", "content": ""}
    for d in deltas(events):
        msg["content"] += d.get("content", "")
        if "reasoning_content" in d:
            msg["reasoning_content"] = msg.get("reasoning_content", "") + d["reasoning_content"]
        for call in d.get("tool_calls", []):
            msg.setdefault("tool_calls", []).append({k: v for k, v in call.items() if k != "index"})
    if not msg["content"] and "tool_calls" in msg:
        msg["content"] = None  # OpenAI's message for tool calls alone
    return msg


@settings(max_examples=200, deadline=None)
@given(st.lists(line_st, max_size=8), st.lists(st.integers(0, 10_000), max_size=10))
def test_streamed_and_aggregated_answers_agree(lines: list[bytes], points: list[int]) -> None:
    stream = b"".join(lines) + done_line("length", prompt_eval_count=5, eval_count=len(lines))
    body, acc = collect(*cut(stream, points))
    events, r = run(stream, include_usage=True)
    choice = body["choices"][0]
    assert choice["message"] == fold(events)
    assert choice["finish_reason"] == r.finish_reason == "length"
    assert body["usage"] == events[-2]["usage"]
    expected = "".join(json.loads(line)["message"]["content"] for line in lines)
    assert (choice["message"]["content"] or "") == expected and acc.done


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(codec="utf-8"), max_size=30))
def test_fast_line_content_is_decoded_exactly(content: str) -> None:
    line = chat_line(content)
    assert go_quote(content).encode() in line
    body, _ = collect(line, done_line())
    assert body["choices"][0]["message"]["content"] == content
