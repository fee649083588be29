"""The Responses re-framer and accumulator (``openai.responses_out``) and the request
translation (``openai.responses``), pure: bytes in, events out, no loop, no socket."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sse_helpers import NASTY, chat_line, cut, done_line, line_st

from clawproxy.config import ModelConfig
from clawproxy.errors import InvalidRequest, UpstreamFailed
from clawproxy.ollama.ndjson import MSG_STREAM_CUT
from clawproxy.openai.responses import build_responses_plan
from clawproxy.openai.responses_out import ResponseAccumulator, ResponseStream

RID = "resp_0123456789abcdef01234567"
CREATED = 1755800904
MODEL = "qwen3:8b"
ECHO: dict[str, Any] = {"instructions": None, "metadata": {}, "tools": []}


def new_stream(**kw: Any) -> ResponseStream:
    return ResponseStream(response_id=RID, created_at=CREATED, model=MODEL, echo=ECHO, **kw)


def new_acc(**kw: Any) -> ResponseAccumulator:
    return ResponseAccumulator(response_id=RID, created_at=CREATED, model=MODEL, echo=ECHO, **kw)


def parse_events(raw: bytes) -> list[dict[str, Any]]:
    """Strict ``event:``/``data:`` framing; the event name must match the data's type."""
    if not raw:
        return []
    assert raw.endswith(b"\n\n")
    events = []
    for block in raw[:-2].split(b"\n\n"):
        head, data = block.split(b"\n")
        assert head.startswith(b"event: ") and data.startswith(b"data: ")
        event = json.loads(data[len(b"data: ") :])
        assert event["type"] == head[len(b"event: ") :].decode()
        events.append(event)
    return events


def run(*reads: bytes, eof: bool = True) -> tuple[list[dict[str, Any]], ResponseStream]:
    s = new_stream()
    raw = b"".join(s.feed(d) for d in reads) + (s.eof() if eof else b"")
    return parse_events(raw), s


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def call(name: str, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    return {"id": call_id, "function": {"index": 0, "name": name, "arguments": args}}


def test_text_events_in_documented_order() -> None:
    events, s = run(
        chat_line("Hel"),
        chat_line("lo"),
        done_line(prompt_eval_count=3, eval_count=2),
    )
    assert types(events) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["output"] == []
    assert [e["delta"] for e in events if e["type"].endswith("text.delta")] == ["Hel", "lo"]
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["id"] == RID
    [message] = final["output"]
    assert message["type"] == "message" and message["id"].startswith("msg_")
    assert message["content"] == [
        {"type": "output_text", "text": "Hello", "annotations": [], "logprobs": []}
    ]
    assert final["usage"]["total_tokens"] == 5
    assert final["usage"]["output_tokens_details"] == {"reasoning_tokens": 0}
    assert s.done and s.error is None and s.deltas == 2
    # Every item event names the item the added event opened.
    assert {e.get("item_id") for e in events[3:-2]} == {message["id"]}


def test_reasoning_message_and_calls_are_items_in_order() -> None:
    calls = [call("f", {"a": 1}, "call_1"), call("g", {}, "call_2")]
    events, _ = run(
        chat_line(thinking="think"),
        chat_line("Sure"),
        chat_line(tool_calls=calls),
        done_line(),
    )
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == [
        "reasoning",
        "message",
        "function_call",
        "function_call",
    ]
    reasoning, _, first, second = final["output"]
    assert reasoning["summary"] == [{"type": "summary_text", "text": "think"}]
    assert (first["call_id"], first["name"], json.loads(first["arguments"])) == (
        "call_1",
        "f",
        {"a": 1},
    )
    assert (second["call_id"], second["arguments"]) == ("call_2", "{}")
    assert first["id"].startswith("fc_") and first["status"] == "completed"
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [e["output_index"] for e in added] == [0, 1, 2, 3]
    fc = [e for e in events if e["type"].startswith("response.function_call_arguments")]
    assert [(e["type"][-5:], e["output_index"]) for e in fc] == [
        ("delta", 2),
        (".done", 2),
        ("delta", 3),
        (".done", 3),
    ]
    assert "response.reasoning_summary_text.delta" in types(events)


def test_length_is_incomplete_with_reason() -> None:
    events, s = run(chat_line("a"), done_line("length"))
    assert types(events)[-1] == "response.incomplete"
    final = events[-1]["response"]
    assert final["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["status"] == "incomplete"
    assert s.done


@pytest.mark.parametrize("how", ["error_line", "eof", "fail", "bad_line"])
def test_failure_is_response_failed_never_completed(how: str) -> None:
    s = new_stream()
    raw = s.feed(chat_line("partial"))
    if how == "error_line":
        raw += s.feed(b'{"error":"model crashed"}\n')
        message, code = "model crashed", "upstream_error"
    elif how == "bad_line":
        raw += s.feed(b"{nope\n")
        message, code = "upstream sent an invalid stream line", "upstream_unavailable"
    elif how == "eof":
        raw += s.eof()
        message, code = MSG_STREAM_CUT, "upstream_unavailable"
    else:
        raw += s.fail("upstream timed out", "upstream_timeout")
        message, code = "upstream timed out", "upstream_timeout"
    # Nothing more after the failure, whatever comes.
    raw += s.feed(done_line()) + s.eof() + s.fail("again", "x")
    events = parse_events(raw)
    assert types(events)[-1] == "response.failed"
    assert "response.completed" not in types(events)
    failed = events[-1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": code, "message": message}
    assert s.error is not None and not s.done
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_failure_before_any_line_still_opens_the_response() -> None:
    s = new_stream()
    events = parse_events(s.fail("reset", "upstream_unavailable"))
    assert types(events) == ["response.created", "response.in_progress", "response.failed"]


def test_answer_over_the_cap_fails() -> None:
    s = new_stream(max_content_bytes=8)
    events = parse_events(s.feed(chat_line("12345") + chat_line("67890")))
    assert types(events)[-1] == "response.failed"
    assert "exceeded 8 bytes" in events[-1]["response"]["error"]["message"]


def test_bytes_after_done_are_noticed() -> None:
    s = new_stream()
    s.feed(chat_line("a") + done_line() + chat_line("late"))
    assert s.done and s.extra_after_done
    acc = new_acc()
    acc.feed(chat_line("a") + done_line())
    acc.feed(b"x")
    assert acc.extra_after_done


def test_accumulator_matches_the_stream_final_response() -> None:
    lines = [
        chat_line(thinking="hm"),
        *(chat_line(t) for t in NASTY),
        chat_line(tool_calls=[call("f", {"q": "<x>"}, "call_9")]),
        done_line(prompt_eval_count=7, eval_count=9),
    ]
    events, _ = run(*lines)
    acc = new_acc()
    for line in lines:
        acc.feed(line)
    body = json.loads(acc.result())
    assert body == events[-1]["response"]
    assert body["output"][1]["content"][0]["text"] == "".join(NASTY)
    assert acc.completion_tokens == 9


def test_accumulator_failures_raise() -> None:
    acc = new_acc()
    acc.feed(chat_line("a"))
    with pytest.raises(UpstreamFailed):
        acc.result()
    acc = new_acc()
    with pytest.raises(UpstreamFailed):
        acc.feed(b'{"error":"boom"}\n')
    with pytest.raises(UpstreamFailed):
        acc.feed(b"")


@settings(max_examples=200, deadline=None)
@given(st.lists(line_st, max_size=8), st.lists(st.integers(0, 10_000), max_size=10))
def test_any_split_gives_the_same_events(lines: list[bytes], points: list[int]) -> None:
    data = b"".join(lines) + done_line()
    whole, _ = run(data)
    pieces, _ = run(*cut(data, points))
    assert pieces == whole
    assert types(whole)[-1] == "response.completed"


def test_byte_by_byte_gives_the_same_events() -> None:
    data = b"".join(
        [chat_line(thinking="t\u2028"), *(chat_line(t) for t in NASTY), done_line("length")]
    )
    whole, _ = run(data)
    split, _ = run(*(data[i : i + 1] for i in range(len(data))))
    assert split == whole


# --- the request translation ---------------------------------------------------------------

DEFAULTS = ModelConfig(name="qwen3:8b")


def plan(**body: Any) -> Any:
    return build_responses_plan({"model": MODEL, "input": "hi", **body}, DEFAULTS)


def refusal(**body: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        plan(**body)
    return info.value


def test_items_become_chat_messages() -> None:
    image = "data:image/png;base64,iVBORw0KGgo="
    p = plan(
        instructions="Be brief.",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "look"},
                                          {"type": "input_image", "image_url": image}]},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "why"}]},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "calling"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"x":1}'},
            {"type": "function_call", "call_id": "c2", "name": "f", "arguments": ""},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {"type": "function_call_output", "call_id": "c2", "output": "two"},
            {"role": "developer", "content": "dev"},
        ],
    )  # fmt: skip
    messages = plan_messages(p)
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[1] == {"role": "user", "content": "look", "images": ["iVBORw0KGgo="]}
    assistant = messages[2]
    assert (assistant["content"], assistant["thinking"]) == ("calling", "why")
    assert [c["function"] for c in assistant["tool_calls"]] == [
        {"name": "f", "arguments": {"x": 1}},
        {"name": "f", "arguments": {}},
    ]
    assert messages[3] == {"role": "tool", "content": "one", "tool_name": "f", "tool_call_id": "c1"}
    assert messages[4]["content"] == "two"
    assert messages[5] == {"role": "system", "content": "dev"}


def plan_messages(p: Any) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = p.payload["messages"]
    return result


def test_fields_map_to_ollama_options() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    p = plan(
        max_output_tokens=5,
        temperature=0.5,
        top_p=0.5,
        reasoning={"effort": "high"},
        text={"format": {"type": "json_schema", "name": "x", "schema": schema, "strict": True}},
        tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        metadata={"k": "v"},
        stream=True,
    )
    options = p.payload["options"]
    assert (options["num_predict"], options["temperature"], options["top_p"]) == (5, 0.5, 0.5)
    assert p.payload["think"] == "high" and p.payload["format"] == schema
    assert p.payload["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    ]
    assert p.stream and p.echo["metadata"] == {"k": "v"} and p.echo["max_output_tokens"] == 5
    assert plan(text={"format": {"type": "json_object"}}).payload["format"] == "json"
    assert (
        "tools" not in plan(tools=[{"type": "function", "name": "f"}], tool_choice="none").payload
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
         "input[0].content[0].image_url"),
        ({"input": [{"role": "system", "content": [
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}]},
         "input[0].content[0]"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}]},
         "input[0].arguments"),
        ({"tools": [{"type": "function", "name": "f", "parameters": []}]}, "tools[0].parameters"),
        ({"text": {"format": {"type": "json_schema", "schema": 3}}}, "text.format.schema"),
        ({"instructions": "x", "input": []}, "input"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"reasoning": {"effort": "huge"}}, "reasoning.effort"),
        ({"reasoning": {"summary": ["x"]}}, "reasoning.summary"),
        ({"truncation": ["x"]}, "truncation"),
        ({"text": {"verbosity": {}}}, "text.verbosity"),
        ({"input": [{"role": "user", "content": [{"type": ["input_text"]}]}]},
         "input[0].content[0].type"),
        ({"parallel_tool_calls": 1}, "parallel_tool_calls"),
        ({"metadata": {"k": 1}}, "metadata.k"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": 3}]},
         "input[0].output"),
        ({"input": [{"type": "function_call_output", "call_id": "c",
                     "output": [{"type": "input_text", "text": 3}]}]},
         "input[0].output[0].text"),
    ],
)  # fmt: skip
def test_chat_refusals_name_the_responses_field(body: dict[str, Any], param: str) -> None:
    exc = refusal(**body)
    assert exc.param == param
    assert exc.message.startswith(param + " ")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["type", "role", "content", "text", "name", "call_id", "output"]),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)
_fields = st.sampled_from(
    ["input", "instructions", "tools", "tool_choice", "text", "reasoning", "metadata",
     "truncation", "parallel_tool_calls", "store", "include", "max_output_tokens", "user"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_fields, _json, max_size=4))
def test_any_body_is_a_plan_or_a_400(body: dict[str, Any]) -> None:
    # Never a TypeError or KeyError (a 500): a plan, or a refusal naming a field.
    try:
        build_responses_plan({"model": MODEL, "input": "hi", **body}, DEFAULTS)
    except InvalidRequest as exc:
        assert exc.param
