"""The whole path with the official ``openai`` client: client -> gateway -> simulator -> back."""

from __future__ import annotations

import json
from typing import Any

import pytest
from harness import Harness, ask, client, content_of, post_json

from clawproxy.simulator import Fault, Reply, tool_call

TRICKY_TOKENS = [
    "He said ",
    '"hi"',
    " \\ back\\slash",
    " <b>&amp;</b>",
    "\nnew line\n",
    "\ttab",
    " 漢字",
    " emoji 🦀🎉",
    " line\u2028sep\u2029para",
    " nel\u0085",
    "\n\ndata: [DONE]\n\n",
    " ctrl\x01\x1f",
]


def stream_chunks(h: Harness, **kwargs: Any) -> list[Any]:
    return list(ask(h, stream=True, **kwargs))


def test_stream_content_is_exactly_what_ollama_generated(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=TRICKY_TOKENS))
    chunks = stream_chunks(gw)
    assert content_of(chunks) == "".join(TRICKY_TOKENS)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-")
    assert len({c.created for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:])
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert all(c.usage is None for c in chunks)
    assert all(c.model == "qwen3:32b" for c in chunks)


def test_stream_usage_chunk_comes_last(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=["a", "b"], prompt_eval_count=11, eval_count=2))
    chunks = stream_chunks(gw, stream_options={"include_usage": True})
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (11, 2, 13)
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_non_stream_reply(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=TRICKY_TOKENS, prompt_eval_count=5, eval_count=12))
    reply = ask(gw)
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == "".join(TRICKY_TOKENS)
    assert reply.choices[0].finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (5, 12)
    assert reply.usage.total_tokens == 17


@pytest.mark.parametrize("stream", [True, False])
def test_length_finish_reason(gw: Harness, stream: bool) -> None:
    gw.sim.next_reply(Reply(tokens=["one", " two"], done_reason="length"))
    if stream:
        chunks = stream_chunks(gw, max_tokens=2)
        assert chunks[-1].choices[0].finish_reason == "length"
    else:
        assert ask(gw, max_tokens=2).choices[0].finish_reason == "length"


def test_thinking_arrives_as_reasoning_content(gw: Harness) -> None:
    gw.sim.next_reply(Reply(thinking=["Let me ", "think"], tokens=["Answer"]))
    chunks = stream_chunks(gw)
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
        for c in chunks
        if c.choices
    )
    assert reasoning == "Let me think"
    assert content_of(chunks) == "Answer"
    gw.sim.next_reply(Reply(thinking=["Hm"], tokens=["Yes"]))
    message = ask(gw).choices[0].message
    assert (message.model_extra or {}).get("reasoning_content") == "Hm"
    assert message.content == "Yes"


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def two_calls() -> list[dict[str, Any]]:
    # Both with Ollama's index 0, as parallel calls often arrive (PROTOCOL 5.2).
    return [
        tool_call("get_weather", {"city": "Tokyo <JP>"}, call_id="call_aaaaaaaa"),
        tool_call("get_weather", {"city": "Paris"}, call_id="call_bbbbbbbb"),
    ]


def test_streamed_tool_calls_get_distinct_indexes(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tool_calls=two_calls()))
    chunks = stream_chunks(gw, tools=TOOLS)
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [tc.index for tc in calls] == [0, 1]
    assert [tc.id for tc in calls] == ["call_aaaaaaaa", "call_bbbbbbbb"]
    assert [json.loads(tc.function.arguments) for tc in calls] == [
        {"city": "Tokyo <JP>"},
        {"city": "Paris"},
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    sent = gw.sim.requests[-1].json
    assert sent["tools"][0]["function"]["name"] == "get_weather"


def test_non_stream_tool_calls_and_tool_message_round_trip(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tool_calls=two_calls()[:1]))
    reply = ask(gw, tools=TOOLS)
    call = reply.choices[0].message.tool_calls[0]
    assert reply.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Tokyo <JP>"}
    gw.sim.next_reply(Reply(tokens=["Sunny"]))
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
    ]
    assert ask(gw, messages=messages, tools=TOOLS).choices[0].message.content == "Sunny"
    sent = gw.sim.requests[-1].json["messages"]
    assert sent[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Tokyo <JP>"}
    assert sent[2]["tool_name"] == "get_weather"
    assert sent[2]["content"] == "sunny, 21C"


def test_parameters_arrive_in_ollamas_request(gw: Harness) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    ask(
        gw,
        model="qwen3:32b",
        temperature=0.2,
        top_p=0.5,
        max_completion_tokens=33,
        stop=["END"],
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        reasoning_effort="low",
    )
    sent = gw.sim.requests[-1].json
    assert sent["model"] == "qwen3:32b"
    assert sent["stream"] is True
    assert sent["options"] == {
        "num_ctx": 4096,
        "temperature": 0.2,
        "top_p": 0.5,
        "num_predict": 33,
        "stop": ["END"],
        "seed": 7,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
    }
    assert sent["format"] == schema
    assert sent["think"] == "low"
    assert "keep_alive" not in sent


def test_config_defaults_are_used_and_overridable() -> None:
    settings = {
        "model.temperature": 0.3,
        "model.top_p": 0.8,
        "model.context_length": 8192,
        "model.name": "llama3.2:latest",
    }
    with Harness(settings) as h:
        # No model in the request: model.name is the default.
        status, _, _ = post_json(
            h, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}
        )
        assert status == 200
        assert h.sim.requests[-1].json["model"] == "llama3.2:latest"
        options = h.sim.requests[-1].json["options"]
        assert options == {"num_ctx": 8192, "temperature": 0.3, "top_p": 0.8}
        ask(h, model="llama3.2:latest", temperature=1.5)
        assert h.sim.requests[-1].json["options"]["temperature"] == 1.5


def test_models_list(gw: Harness) -> None:
    models = client(gw).models.list()
    ids = [m.id for m in models.data]
    assert "qwen3:32b" in ids
    assert all(m.owned_by == "library" and m.created > 1_600_000_000 for m in models.data)


def test_streams_survive_split_and_coalesced_upstream_bytes(gw: Harness) -> None:
    for fault in (Fault(byte_by_byte=True), Fault(coalesce=4), Fault(split_writes=3, seed=5)):
        gw.sim.next_reply(Reply(tokens=TRICKY_TOKENS, fault=fault))
        assert content_of(stream_chunks(gw)) == "".join(TRICKY_TOKENS), fault
        gw.sim.next_reply(Reply(tokens=TRICKY_TOKENS, fault=fault))
        assert ask(gw).choices[0].message.content == "".join(TRICKY_TOKENS), fault
