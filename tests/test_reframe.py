"""SseReframer and LineSplitter: Ollama NDJSON in, OpenAI SSE out, checked from the outside.

Input lines are written here the way Go's json.Marshal writes them (an escaper of our own,
not orjson), and output is decoded with a minimal SSE parser of our own, then compared
with the text that went in.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sse_helpers import (
    CID,
    CREATED,
    DONE,
    MODEL,
    NASTY,
    chat_line,
    cut,
    deltas,
    done_line,
    go_quote,
    line_st,
    new,
    parse_sse,
    run,
    text,
)

from clawproxy.ollama.ndjson import LineSplitter, LineTooLong


@pytest.mark.parametrize("content", NASTY)
def test_content_round_trips_whole_and_byte_by_byte(content: str) -> None:
    stream = chat_line(content) + chat_line("!") + done_line()
    whole, r = run(stream)
    assert text(whole) == content + "!"
    assert whole[-1] == DONE and r.done and r.error is None
    single, _ = run(*(stream[i : i + 1] for i in range(len(stream))))
    assert single == whole


def test_sse_injection_stays_inside_one_data_line() -> None:
    events, _ = run(chat_line("\n\ndata: [DONE]\n\n"), chat_line("after"), done_line())
    assert events.count(DONE) == 1 and events[-1] == DONE
    assert [d.get("content") for d in deltas(events)][1:3] == ["\n\ndata: [DONE]\n\n", "after"]


def test_fast_path_splices_go_bytes_unchanged() -> None:
    # orjson would write "<" raw; seeing Go's \u003c in the output proves nothing was decoded.
    r = new()
    out = r.feed(chat_line("a<b"))
    assert b'{"content":"a\\u003cb"}' in out
    assert text(parse_sse(out)) == "a<b"


def test_fast_and_general_paths_agree() -> None:
    content = 'x<"y"\n\u2028'
    fast = chat_line(content)
    # Same object, keys in another order: the fast pattern cannot match, orjson decodes it.
    slow = (
        '{"done":false,"message":{"content":' + go_quote(content) + ',"role":"assistant"},'
        '"model":"m"}\n'
    ).encode()
    a, b = new(), new()
    out_fast, out_slow = a.feed(fast), b.feed(slow)
    assert out_fast != out_slow
    assert parse_sse(out_fast) == parse_sse(out_slow)
    assert a.deltas == b.deltas == 1


def test_chunk_envelope_constant_and_role_only_first() -> None:
    events, _ = run(chat_line("a"), chat_line("", thinking="t"), chat_line("b"), done_line())
    chunks = [e for e in events if e != DONE]
    for e in chunks:
        assert list(e) == ["id", "object", "created", "model", "choices"]
        assert (e["id"], e["object"], e["created"], e["model"]) == (
            CID,
            "chat.completion.chunk",
            CREATED,
            MODEL,
        )
        assert list(e["choices"][0]) == ["index", "delta", "finish_reason"]
    ds = deltas(events)
    assert ds[0] == {"role": "assistant", "content": ""}
    assert all("role" not in d for d in ds[1:])
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 4 + ["stop"]
    assert ds[-1] == {}


def test_first_line_done_still_gets_role_chunk() -> None:
    events, r = run(done_line())
    assert deltas(events) == [{"role": "assistant", "content": ""}, {}]
    assert events[-1] == DONE and r.deltas == 0


@pytest.mark.parametrize(
    ("reason", "calls", "expected"),
    [
        ("stop", False, "stop"),
        (None, False, "stop"),
        ("length", False, "length"),
        ("stop", True, "tool_calls"),
        ("length", True, "length"),
        ("unload", False, "stop"),
    ],
)
def test_finish_reason(reason: str | None, calls: bool, expected: str) -> None:
    tc = [{"id": "call_1", "function": {"index": 0, "name": "f", "arguments": {}}}]
    first = chat_line(tool_calls=tc) if calls else chat_line("x")
    events, r = run(first, done_line(reason))
    assert events[-2]["choices"][0]["finish_reason"] == expected == r.finish_reason


def test_usage_only_when_asked_and_before_done() -> None:
    stream = chat_line("hi") + done_line(prompt_eval_count=26, eval_count=282)
    events, r = run(stream, include_usage=True)
    usage = events[-2]
    assert usage["choices"] == [] and events[-1] == DONE
    assert usage["usage"] == {"prompt_tokens": 26, "completion_tokens": 282, "total_tokens": 308}
    assert (usage["id"], usage["created"], usage["model"]) == (CID, CREATED, MODEL)
    assert (r.prompt_tokens, r.completion_tokens) == (26, 282)
    plain, _ = run(stream)
    assert all("usage" not in e for e in plain if e != DONE)
    assert len(plain) == len(events) - 1
    absent, _ = run(done_line(), include_usage=True)
    assert absent[-2]["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def test_tool_calls_get_a_running_index_and_string_arguments() -> None:
    first = {"id": "call_k3x9q2ab", "function": {"index": 0, "name": "a", "arguments": {"z": 1}}}
    second = {"function": {"index": 0, "name": "b", "arguments": {"q": "<&>", "a": [1]}}}
    third = {"function": {"index": 1, "name": "c", "arguments": {}}}
    events, r = run(
        chat_line(tool_calls=[first]), chat_line(tool_calls=[second, third]), done_line()
    )
    calls = [c for d in deltas(events) for c in d.get("tool_calls", [])]
    assert [c["index"] for c in calls] == [0, 1, 2]
    assert [c["function"]["name"] for c in calls] == ["a", "b", "c"]
    assert all(
        c["type"] == "function" and list(c) == ["index", "id", "type", "function"] for c in calls
    )
    assert calls[0]["id"] == "call_k3x9q2ab"
    assert re.fullmatch(r"call_[0-9a-f]{24}", calls[1]["id"])
    assert calls[1]["id"] != calls[2]["id"]
    # Arguments are a JSON string; key order as the model wrote it.
    assert list(json.loads(calls[1]["function"]["arguments"]).items()) == [("q", "<&>"), ("a", [1])]
    assert r.deltas == 3 and r.finish_reason == "tool_calls"


def test_thinking_becomes_reasoning_content_before_content() -> None:
    events, r = run(
        chat_line("", thinking="let me think"),
        chat_line("answer", thinking=" more"),
        done_line(),
    )
    assert deltas(events)[1:4] == [
        {"reasoning_content": "let me think"},
        {"reasoning_content": " more"},
        {"content": "answer"},
    ]
    assert r.deltas == 3


def test_done_line_content_comes_before_finish() -> None:
    tc = [{"function": {"name": "f", "arguments": {"a": 1}}}]
    events, _ = run(chat_line("a"), chat_line("tail", done=True, done_reason="stop", tool_calls=tc))
    ds = deltas(events)
    assert ds[2] == {"content": "tail"} and ds[3]["tool_calls"][0]["index"] == 0
    assert ds[4] == {} and events[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_empty_content_lines_emit_nothing() -> None:
    events, r = run(chat_line("a"), chat_line(""), chat_line("b"), done_line())
    assert len(deltas(events)) == 4 and r.deltas == 2


def test_error_line_ends_stream_without_done() -> None:
    r = new()
    out = r.feed(chat_line("partial") + b'{"error":"an error was encountered <here>"}\n')
    events = parse_sse(out)
    assert text(events) == "partial"
    assert events[-1] == {
        "error": {
            "message": "an error was encountered <here>",
            "type": "api_error",
            "param": None,
            "code": "upstream_error",
        }
    }
    assert DONE not in events and r.error == "an error was encountered <here>" and not r.done
    assert r.feed(chat_line("later") + done_line()) == b"" and r.eof() == b""
    assert r.fail("timeout", "upstream_timeout") == b""


def test_eof_without_done_is_an_error_event() -> None:
    events, r = run(chat_line("half"), b'{"model":"m","creat')
    assert events[-1]["error"]["message"] == "upstream ended the stream before it was complete"
    assert DONE not in events and r.error is not None and not r.done


def test_eof_and_fail_after_done_are_silent() -> None:
    r = new()
    r.feed(chat_line("x") + done_line())
    assert r.done and r.eof() == b"" and r.fail("late", "upstream_timeout") == b""
    assert not r.extra_after_done


def test_fail_emits_error_once() -> None:
    r = new()
    r.feed(chat_line("x"))
    events = parse_sse(r.fail("upstream went silent for 30s", "upstream_timeout"))
    assert events == [
        {
            "error": {
                "message": "upstream went silent for 30s",
                "type": "api_error",
                "param": None,
                "code": "upstream_timeout",
            }
        }
    ]
    assert r.fail("again", "x") == b"" and r.eof() == b"" and r.feed(b"{}\n") == b""


@pytest.mark.parametrize(
    "garbage", [b"SECRET<not json>", b"[1,2]", b'"SECRET"', b"null", b'{"message":"SECRET"}']
)
def test_invalid_line_is_not_reflected(garbage: bytes) -> None:
    events, _ = run(chat_line("ok") + garbage + b"\n" + chat_line("never"))
    assert events[-1]["error"]["message"] == "upstream sent an invalid stream line"
    assert b"SECRET" not in json.dumps(events).encode() and text(events) == "ok"


def test_too_long_lines_fail_however_they_arrive() -> None:
    limit = 200
    line = chat_line("x" * 150)
    assert len(line) - 1 > limit
    for reads in (
        [line],
        [line[:100], line[100:]],
        [line[:-1]],
        [chat_line("a"), line],
        [chat_line("a") + line[:-1]],
    ):
        r = new(max_line_bytes=limit)
        events = parse_sse(b"".join(r.feed(d) for d in reads))
        assert events[-1]["error"]["message"] == "upstream line exceeded 200 bytes"
        assert r.error is not None
    fits = "y" * (limit + 1 - len(chat_line("")))
    assert len(chat_line(fits)) - 1 == limit
    r = new(max_line_bytes=limit)
    assert text(parse_sse(r.feed(chat_line("a") + chat_line(fits)))) == "a" + fits


def test_extra_after_done_is_flagged() -> None:
    stream = chat_line("x") + done_line()
    for reads in ([stream + b"\n"], [stream + b'{"x'], [stream, b"junk"]):
        r = new()
        for d in reads:
            r.feed(d)
        assert r.done and r.extra_after_done
    _, clean = run(stream)
    assert not clean.extra_after_done


def test_crlf_and_blank_lines_are_tolerated() -> None:
    stream = chat_line("a").replace(b"\n", b"\r\n") + b"\n\r\n" + chat_line("b") + done_line()
    events, r = run(stream)
    assert text(events) == "ab" and r.done


@pytest.mark.parametrize(
    "body",
    [b"a\rb", b"a\\\rb", b"a\x01b", b"a\\qb", b"a\\u12b", b"a\\", b'a"b', b"a\nb", b"model"],
)
def test_fast_path_refuses_what_is_not_json(body: bytes) -> None:
    # Raw CR would end the SSE line; the others are not JSON. orjson must see them and fail.
    line = b'{"model":"m","message":{"role":"assistant","content":"' + body + b'"},"done":false}\n'
    if body == b"model":
        line = line.replace(b'"m"', b'"m\x01"')  # a raw control byte in the prefix
    if body == b"a\nb":
        line = line.replace(b"a\nb", b"a\\\nb")  # a backslash and a raw LF: splits the line
    events, _ = run(chat_line("ok") + line)
    assert text(events) == "ok"
    assert events[-1]["error"]["message"] == "upstream sent an invalid stream line"


def test_nothing_is_emitted_before_the_newline() -> None:
    r = new()
    r.feed(chat_line("a"))
    line = chat_line("b")
    assert r.feed(line[:-1]) == b""
    assert text(parse_sse(r.feed(b"\n"))) == "b"
    assert r.feed(line[:-1]) == b""
    events = parse_sse(r.feed(b"tail\n"))
    assert text(events) == "" and events[-1]["error"]["code"] == "upstream_unavailable"


def test_a_whole_line_read_continues_a_buffered_partial() -> None:
    r = new()
    assert text(parse_sse(r.feed(chat_line("a") + b"junk"))) == "a"
    events = parse_sse(r.feed(chat_line("b")))
    assert text(events) == "" and events[-1]["error"]["code"] == "upstream_unavailable"


def test_line_splitter_bounds_and_semantics() -> None:
    s = LineSplitter(max_line_bytes=9)
    assert s.feed(b"ab") == [] and s.pending == 2
    assert s.feed(b"c\r\nde\n\nfg") == [b"abc", b"de", b""]
    assert s.pending == 2
    assert s.feed(b"h\xe2\x80\xa8i\xc2\x85\n") == ["fgh\u2028i\x85".encode()]
    with pytest.raises(LineTooLong):
        s.feed(b"1234567890")
    with pytest.raises(LineTooLong):
        LineSplitter(4).feed(b"12345\n")
    # The cap counts a trailing CR: a partial line cannot know whether its CR is the last byte.
    assert LineSplitter(4).feed(b"1234\n12\r\n") == [b"1234", b"12"]
    with pytest.raises(LineTooLong):
        LineSplitter(4).feed(b"1234\r\n")


@settings(max_examples=200, deadline=None)
@given(st.lists(line_st, max_size=8), st.lists(st.integers(0, 10_000), max_size=12))
def test_any_chunking_gives_the_same_events(lines: list[bytes], points: list[int]) -> None:
    stream = b"".join(lines) + done_line(prompt_eval_count=3, eval_count=len(lines))
    whole, r = run(stream, include_usage=True)
    pieces, r2 = run(*cut(stream, points), include_usage=True)
    bytewise, _ = run(*(stream[i : i + 1] for i in range(len(stream))), include_usage=True)
    assert pieces == whole == bytewise
    assert r.deltas == r2.deltas and r.done and r2.done
    expected = "".join(json.loads(line)["message"]["content"] for line in lines)
    assert text(whole) == expected
    splitter = LineSplitter()
    split = [x for piece in cut(stream, points) for x in splitter.feed(piece)]
    assert split == stream.split(b"\n")[:-1] and splitter.pending == 0


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(codec="utf-8"), min_size=1, max_size=40))
def test_fast_path_decodes_to_the_text(content: str) -> None:
    quoted = go_quote(content).encode()
    r = new()
    out = r.feed(chat_line("x")) + r.feed(chat_line(content))
    # Go's escapes reach the client verbatim: the fast path took this line.
    assert b'{"content":' + quoted + b"}" in out
    assert text(parse_sse(out)) == "x" + content and r.deltas == 2


fragments = st.sampled_from(
    [
        chat_line("a"),
        chat_line("", thinking="t"),
        done_line(),
        b'{"error":"boom"}\n',
        b'"message":{"role":"assistant","content":"',
        b'"},"done":false}',
        b"\n",
        b"\r",
        b"\\",
        b'"',
        b"{",
        b"\xff",
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(fragments, st.binary(max_size=30)), max_size=12),
    st.lists(st.integers(0, 500), max_size=8),
)
def test_arbitrary_bytes_never_raise(parts: list[bytes], points: list[int]) -> None:
    data = b"".join(parts)
    r = new(include_usage=True, max_line_bytes=160)
    raw = b"".join(r.feed(p) for p in cut(data, points)) + r.eof()
    assert (r.error is not None) != r.done
    # Framing holds whatever came in; bytes >= 0x80 in a fast line are passed on as is.
    for block in raw[:-2].split(b"\n\n"):
        assert block.startswith(b"data: ") and b"\r" not in block and b"\n" not in block
        payload = block[6:].decode(errors="replace")
        if payload != DONE:
            json.loads(payload)
    assert r.feed(b"more\n") == b""


raw_line_st = st.lists(
    st.one_of(
        st.sampled_from([b"a", b"\r", b'"', "\u2028".encode(), "\x85".encode()]), st.binary()
    ),
    max_size=6,
).map(lambda parts: b"".join(parts).replace(b"\n", b""))


@settings(max_examples=200, deadline=None)
@given(st.lists(raw_line_st, max_size=8), st.lists(st.integers(0, 10_000), max_size=12))
def test_line_splitter_any_cuts_same_lines(lines: list[bytes], points: list[int]) -> None:
    data = b"".join(line + b"\n" for line in lines)
    splitter = LineSplitter()
    got = [x for piece in cut(data, points) for x in splitter.feed(piece)]
    assert got == [line.removesuffix(b"\r") for line in lines] and splitter.pending == 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 60).map(lambda n: chat_line("x" * n)), min_size=1, max_size=6),
    st.integers(100, 180),
    st.lists(st.integers(0, 10_000), max_size=8),
)
def test_splitter_and_reframer_agree_on_the_cap(
    lines: list[bytes], limit: int, points: list[int]
) -> None:
    data = b"".join(lines)
    over = any(len(line) - 1 > limit for line in lines)
    splitter = LineSplitter(limit)
    try:
        for piece in cut(data, points):
            splitter.feed(piece)
    except LineTooLong:
        raised = True
    else:
        raised = False
    r = new(max_line_bytes=limit)
    events = parse_sse(b"".join(r.feed(p) for p in cut(data, points)))
    assert raised == over == (r.error == f"upstream line exceeded {limit} bytes")
    fitting = [json.loads(x)["message"]["content"] for x in lines]
    if over:
        first = next(i for i, line in enumerate(lines) if len(line) - 1 > limit)
        fitting = fitting[:first]
    assert text(events) == "".join(fitting)
