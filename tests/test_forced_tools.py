"""Forced tool calls: ``tool_choice`` ``"required"`` or a named function, asked of Ollama as
structured output (``format``) and answered as a call (``clawproxy.openai.forced``)."""

from __future__ import annotations

import json
from typing import Any

import openai
import orjson
import pytest
from harness import Harness, ask, client
from hypothesis import given, settings
from hypothesis import strategies as st

from clawproxy.openai.forced import (
    CODE_MISMATCH,
    ForcedAccumulator,
    ForcedCall,
    ForcedCallFailed,
    ForcedReframer,
    arguments_problem,
    build_forced,
)
from clawproxy.simulator import Fault, Reply
from clawproxy.simulator import formats as sim_formats

MODEL = "qwen3:32b"
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"zone": {"type": "string"}, "exact": {"type": "boolean"}},
    "required": ["zone", "exact"],
}
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": TIME}},
]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
# What the simulator writes for WEATHER (its required keys, in schema order).
WEATHER_JSON = '{"city":"…","unit":"celsius"}'


def stream_chunks(h: Harness, **kwargs: Any) -> list[Any]:
    return list(ask(h, stream=True, **kwargs))


def streamed_call(chunks: list[Any]) -> tuple[str, str, str]:
    """(id, name, arguments) of the one call, reassembled from the deltas."""
    call_id = name = arguments = ""
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            assert delta.index == 0
            call_id += delta.id or ""
            if delta.function is not None:
                name += delta.function.name or ""
                arguments += delta.function.arguments or ""
    return call_id, name, arguments


# --- chat, end to end ------------------------------------------------------------------------


def test_named_tool_choice_non_stream(gw: Harness) -> None:
    reply = ask(gw, tools=TOOLS, tool_choice=NAMED)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    assert call.function.arguments == WEATHER_JSON
    assert arguments_problem(json.loads(call.function.arguments), WEATHER) is None
    sent = gw.sim.requests[-1].json
    # The schema as the format, no tools (Ollama's tool parsers would fight the grammar).
    assert sent["format"] == WEATHER
    assert "tools" not in sent


def test_named_tool_choice_stream(gw: Harness) -> None:
    chunks = stream_chunks(gw, tools=TOOLS, tool_choice=NAMED)
    assert chunks[0].choices[0].delta.role == "assistant"
    call_id, name, arguments = streamed_call(chunks)
    assert call_id.startswith("call_") and name == "get_weather"
    # Streamed as the model wrote it, in pieces: the first names the call, the rest add text.
    assert arguments == WEATHER_JSON
    pieces = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(pieces) > 2
    assert pieces[0].choices[0].delta.tool_calls[0].function.arguments == ""
    assert all(p.choices[0].delta.tool_calls[0].id is None for p in pieces[1:])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert arguments_problem(json.loads(arguments), WEATHER) is None


def test_named_stream_with_usage(gw: Harness) -> None:
    chunks = stream_chunks(
        gw, tools=TOOLS, tool_choice=NAMED, stream_options={"include_usage": True}
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-2].choices[0].finish_reason == "tool_calls"


def test_required_picks_a_tool(gw: Harness) -> None:
    reply = ask(gw, tools=TOOLS, tool_choice="required")
    (call,) = reply.choices[0].message.tool_calls
    # The simulator takes anyOf's first branch: the first tool.
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == json.loads(WEATHER_JSON)
    sent = gw.sim.requests[-1].json
    branches = sent["format"]["anyOf"]
    assert [b["properties"]["name"]["const"] for b in branches] == ["get_weather", "get_time"]
    assert branches[1]["properties"]["arguments"] == TIME


def test_required_picks_the_named_result(gw: Harness) -> None:
    doc = '{"name":"get_time","arguments":{"zone":"UTC","exact":true}}'
    gw.sim.next_reply(Reply(tokens=[doc[:10], doc[10:]]))
    reply = ask(gw, tools=TOOLS, tool_choice="required")
    (call,) = reply.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    assert json.loads(call.function.arguments) == {"zone": "UTC", "exact": True}
    gw.sim.next_reply(Reply(tokens=[doc[:10], doc[10:]]))
    chunks = stream_chunks(gw, tools=TOOLS, tool_choice="required")
    _, name, arguments = streamed_call(chunks)
    assert name == "get_time" and json.loads(arguments) == {"zone": "UTC", "exact": True}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"city":"x"}',  # unit missing
        '{"city":"x","unit":"kelvin"}',  # not in the enum
        '{"city":1,"unit":"celsius"}',  # wrong type
        '{"city":"x","unit":"celsius","extra":1}',  # additionalProperties false
    ],
)
def test_mismatch_non_stream_is_502(gw: Harness, content: str) -> None:
    gw.sim.next_reply(Reply(tokens=[content]))
    with pytest.raises(openai.APIStatusError) as info:
        ask(gw, tools=TOOLS, tool_choice=NAMED)
    assert info.value.status_code == 502
    body: Any = info.value.body
    assert body["code"] == CODE_MISMATCH
    assert "did not match the tool's schema" in body["message"]
    # The node did its job: no upstream failure counted.
    assert sum(gw.read(lambda: dict(gw.gateway.state.upstream_errors)).values()) == 0


def test_mismatch_from_fault_switch(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=["x"], fault=Fault(bad_format=True)))
    with pytest.raises(openai.APIStatusError) as info:
        ask(gw, tools=TOOLS, tool_choice="required")
    assert info.value.status_code == 502


def test_required_unknown_name_is_502(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=['{"name":"rm_rf","arguments":{}}']))
    with pytest.raises(openai.APIStatusError) as info:
        ask(gw, tools=TOOLS, tool_choice="required")
    assert info.value.status_code == 502
    assert "no tool that was offered" in info.value.body["message"]  # type: ignore[index]


def test_mismatch_stream_is_error_event_without_done(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=['{"city":', '"x"}']))
    received: list[Any] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in ask(gw, stream=True, tools=TOOLS, tool_choice=NAMED):
            received.append(chunk)
    assert "did not match the tool's schema" in str(info.value.message)
    assert all(c.choices[0].finish_reason is None for c in received if c.choices)


def test_mismatch_stream_raw_has_no_done(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=["[]"]))
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "tools": TOOLS,
        "tool_choice": "required",
    }
    text = b""
    endpoint = client(gw).with_options(max_retries=0).chat.completions
    # The stream is cut after the error event (no last chunk): the read ends in error.
    with (
        endpoint.with_streaming_response.create(**body) as response,
        pytest.raises(Exception, match="incomplete chunked read"),
    ):
        for piece in response.iter_bytes():
            text += piece
    assert b"[DONE]" not in text
    assert CODE_MISMATCH.encode() in text


def test_tool_choice_none_and_auto_unchanged(gw: Harness) -> None:
    reply = ask(gw, tools=TOOLS, tool_choice="none")
    assert reply.choices[0].message.content
    sent = gw.sim.requests[-1].json
    assert "tools" not in sent and "format" not in sent
    ask(gw, tools=TOOLS, tool_choice="auto")
    sent = gw.sim.requests[-1].json
    assert len(sent["tools"]) == 2 and "format" not in sent


# --- Responses, end to end ---------------------------------------------------------------------

RESPONSE_TOOLS: list[dict[str, Any]] = [
    {"type": "function", "name": "get_weather", "parameters": WEATHER, "strict": True},
    {"type": "function", "name": "get_time", "parameters": TIME, "strict": True},
]
RESPONSE_NAMED = {"type": "function", "name": "get_weather"}


def calls_of(output: list[Any]) -> list[Any]:
    # qwen3 thinks first: a reasoning item may come before the call.
    return [item for item in output if item.type != "reasoning"]


def respond(h: Harness, **kwargs: Any) -> Any:
    params: dict[str, Any] = {"model": MODEL, "input": "hi", "tools": RESPONSE_TOOLS}
    params.update(kwargs)
    return client(h).responses.create(**params)


def test_responses_named_non_stream(gw: Harness) -> None:
    response = respond(gw, tool_choice=RESPONSE_NAMED)
    assert response.status == "completed"
    (item,) = calls_of(response.output)
    assert item.type == "function_call" and item.name == "get_weather"
    assert item.call_id.startswith("call_")
    assert item.arguments == WEATHER_JSON
    assert gw.sim.requests[-1].json["format"] == WEATHER


def test_responses_named_stream(gw: Harness) -> None:
    events = list(respond(gw, tool_choice=RESPONSE_NAMED, stream=True))
    kinds = [e.type for e in events]
    assert "response.output_text.delta" not in kinds
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert deltas == done.arguments == WEATHER_JSON
    assert kinds[-1] == "response.completed"
    (item,) = calls_of(events[-1].response.output)
    assert item.type == "function_call" and item.name == "get_weather"


def test_responses_required(gw: Harness) -> None:
    response = respond(gw, tool_choice="required")
    (item,) = calls_of(response.output)
    assert item.name == "get_weather" and json.loads(item.arguments) == json.loads(WEATHER_JSON)


def test_responses_mismatch(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=["{}"]))
    with pytest.raises(openai.APIStatusError) as info:
        respond(gw, tool_choice=RESPONSE_NAMED)
    assert info.value.status_code == 502
    gw.sim.next_reply(Reply(tokens=["{}"]))
    received: list[Any] = []
    with pytest.raises(openai.APIConnectionError):
        for event in respond(gw, tool_choice=RESPONSE_NAMED, stream=True):
            received.append(event)
    assert received[-1].type == "response.failed"
    assert received[-1].response.error.code == CODE_MISMATCH
    assert sum(gw.read(lambda: dict(gw.gateway.state.upstream_errors)).values()) == 0


# --- the schema builder and the check ---------------------------------------------------------


def entries(*tools: tuple[str, dict[str, Any] | None]) -> list[dict[str, Any]]:
    out = []
    for name, params in tools:
        function: dict[str, Any] = {"name": name}
        if params is not None:
            function["parameters"] = params
        out.append({"type": "function", "function": function})
    return out


def test_build_forced_named_and_required() -> None:
    tools = entries(("a", WEATHER), ("b", None))
    named = build_forced({"type": "function", "function": {"name": "a"}}, tools)
    assert named is not None and named.name == "a" and named.schema == WEATHER
    required = build_forced("required", tools)
    assert required is not None and required.name is None
    a, b = required.schema["anyOf"]
    assert a == {
        "type": "object",
        "properties": {"name": {"const": "a"}, "arguments": WEATHER},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }
    assert b["properties"]["arguments"] == {"type": "object", "properties": {}}
    single = build_forced("required", entries(("only", TIME)))
    assert single is not None and single.schema["properties"]["name"] == {"const": "only"}
    assert build_forced("auto", tools) is None
    assert build_forced(None, tools) is None


def test_check() -> None:
    forced = build_forced("required", entries(("a", WEATHER), ("b", TIME)))
    assert forced is not None
    assert forced.check('{"name":"b","arguments":{"zone":"z","exact":false}}') == (
        "b",
        '{"zone":"z","exact":false}',
    )
    for bad in ['{"name":"c","arguments":{}}', '{"name":"a"}', '{"name":"a","arguments":[]}']:
        with pytest.raises(ForcedCallFailed):
            forced.check(bad)
    assert arguments_problem({"days": 1.0, "city": "", "unit": "celsius"}, WEATHER) is None
    assert arguments_problem({"days": True, "city": "", "unit": "celsius"}, WEATHER)
    assert arguments_problem({"x": None}, {"type": "object"}) is None


def test_simulator_documents_match_their_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "number"},
            "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}},
            "kind": {"anyOf": [{"const": "x"}, {"type": "string"}]},
            "ok": {"type": ["boolean", "null"]},
        },
        "$defs": {"tag": {"type": "string", "enum": ["red", "blue"]}},
    }
    doc = json.loads(sim_formats.document(schema))
    assert doc == {"n": 1, "tags": ["red"], "kind": "x", "ok": True}
    assert "".join(sim_formats.pieces(sim_formats.document(schema))) == sim_formats.document(schema)
    assert json.loads(sim_formats.document(WEATHER)) == json.loads(WEATHER_JSON)
    assert sim_formats.document("json") == "{}"
    assert sim_formats.bad_json(WEATHER) == "[]"


# --- the re-framer, fed every split -----------------------------------------------------------


def ollama_stream(pieces: list[str], done_reason: str = "stop") -> bytes:
    lines = [
        orjson.dumps(
            {
                "model": MODEL,
                "created_at": "2026-01-01T00:00:00Z",
                "message": {"role": "assistant", "content": piece},
                "done": False,
            }
        )
        for piece in pieces
    ]
    lines.append(
        orjson.dumps(
            {
                "model": MODEL,
                "created_at": "2026-01-01T00:00:00Z",
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": done_reason,
                "prompt_eval_count": 3,
                "eval_count": len(pieces),
            }
        )
    )
    return b"\n".join(lines) + b"\n"


def sse_call(body: bytes) -> tuple[list[dict[str, Any]], str, str]:
    """The chunks, and the call's name and arguments joined from them."""
    assert body.endswith(b"data: [DONE]\n\n")
    chunks = [
        json.loads(event[len(b"data: ") :])
        for event in body.split(b"\n\n")
        if event and event != b"data: [DONE]"
    ]
    name = arguments = ""
    for chunk in chunks:
        for call in chunk["choices"][0]["delta"].get("tool_calls", []) if chunk["choices"] else []:
            name += call["function"].get("name", "")
            arguments += call["function"]["arguments"]
    return chunks, name, arguments


def reframer(forced: ForcedCall) -> ForcedReframer:
    return ForcedReframer(
        forced=forced, completion_id="chatcmpl-1", created=1, model=MODEL, include_usage=True
    )


NAMED_FORCED = build_forced(
    {"type": "function", "function": {"name": "a"}}, entries(("a", WEATHER))
)
REQUIRED_FORCED = build_forced("required", entries(("a", WEATHER), ("b", TIME)))
WEATHER_PIECES = ['{"city"', ':"Tō', 'kyo\\n"', ',"unit":"celsius"}']
TIME_PIECES = ['{"name":"b",', '"arguments":{"zone":"Z","exact":true}}']


def feed_split(stream: ForcedReframer, data: bytes, cuts: list[int]) -> bytes:
    out = b""
    start = 0
    for cut in sorted(set(cuts)):
        out += stream.feed(data[start:cut])
        start = cut
    out += stream.feed(data[start:])
    assert stream.eof() == b""
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_reframer_any_split_gives_the_same_events(cuts: list[int]) -> None:
    assert NAMED_FORCED is not None and REQUIRED_FORCED is not None
    for forced, pieces, name in (
        (NAMED_FORCED, WEATHER_PIECES, "a"),
        (REQUIRED_FORCED, TIME_PIECES, "b"),
    ):
        data = ollama_stream(pieces)
        whole = reframer(forced).feed(data)
        split = feed_split(reframer(forced), data, cuts)
        _, got_name, arguments = sse_call(split)
        assert got_name == name
        assert sse_call(whole)[1:] == (got_name, arguments)
        if forced is NAMED_FORCED:
            assert arguments == "".join(pieces)
        assert orjson.loads(arguments) == (
            orjson.loads("".join(pieces))
            if forced is NAMED_FORCED
            else {"zone": "Z", "exact": True}
        )


def test_reframer_byte_by_byte() -> None:
    assert NAMED_FORCED is not None
    data = ollama_stream(WEATHER_PIECES)
    stream = reframer(NAMED_FORCED)
    out = b"".join(stream.feed(data[i : i + 1]) for i in range(len(data)))
    chunks, name, arguments = sse_call(out)
    assert (name, arguments) == ("a", "".join(WEATHER_PIECES))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["prompt_tokens"] == 3
    assert stream.done and stream.error is None


def test_reframer_mismatch_and_cut() -> None:
    assert NAMED_FORCED is not None
    stream = reframer(NAMED_FORCED)
    out = stream.feed(ollama_stream(['{"city":"x"}']))
    assert b"[DONE]" not in out and CODE_MISMATCH.encode() in out
    assert isinstance(stream.error, ForcedCallFailed) and not stream.done
    assert stream.eof() == b""
    stream = reframer(NAMED_FORCED)
    out = stream.feed(ollama_stream(WEATHER_PIECES)[:60])
    assert b"error" not in out
    tail = stream.eof()
    assert b"upstream_unavailable" in tail and stream.error is not None


def test_accumulator() -> None:
    assert REQUIRED_FORCED is not None
    acc = ForcedAccumulator(forced=REQUIRED_FORCED, completion_id="c", created=1, model=MODEL)
    data = ollama_stream(TIME_PIECES)
    for i in range(0, len(data), 7):
        acc.feed(data[i : i + 7])
    body = json.loads(acc.result())
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "b", "arguments": '{"zone":"Z","exact":true}'}
    acc = ForcedAccumulator(forced=REQUIRED_FORCED, completion_id="c", created=1, model=MODEL)
    with pytest.raises(ForcedCallFailed):
        acc.feed(ollama_stream(["{}"]))
    with pytest.raises(ForcedCallFailed):
        acc.result()
