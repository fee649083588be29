"""POST /v1/responses: the official client, the gateway, the simulator's /api/chat."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from harness import Harness, client, post_json, raw

from clawproxy.simulator import Fault, Reply, tool_call

MODEL = "qwen3:32b"
PATH = "/v1/responses"
TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": False,
    }
]


def create(h: Harness, **kwargs: Any) -> Any:
    params: dict[str, Any] = {"model": MODEL, "input": "hi"}
    params.update(kwargs)
    return client(h).responses.create(**params)


def sent_json(h: Harness) -> dict[str, Any]:
    request = h.sim.requests[-1]
    assert request.path == "/api/chat"
    result: dict[str, Any] = request.json
    return result


def test_text_reply_with_instructions(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=["Hello", ' "wörld"'], prompt_eval_count=6, eval_count=2))
    reply = create(gw, instructions="Be brief.", metadata={"trace": "t1"}, user="u1")
    assert reply.object == "response" and reply.id.startswith("resp_")
    assert (reply.status, reply.model) == ("completed", MODEL)
    assert reply.output_text == 'Hello "wörld"'
    [message] = reply.output
    assert message.type == "message" and message.id.startswith("msg_")
    assert message.content[0].annotations == []
    assert (reply.usage.input_tokens, reply.usage.output_tokens, reply.usage.total_tokens) == (
        6,
        2,
        8,
    )
    assert reply.usage.input_tokens_details.cached_tokens == 0
    assert reply.metadata == {"trace": "t1"} and reply.instructions == "Be brief."
    assert reply.store is False
    sent = sent_json(gw)
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    assert sent["stream"] is True


def test_function_tools_round_trip(gw: Harness) -> None:
    gw.sim.next_reply(
        Reply(tool_calls=[tool_call("get_weather", {"city": "Tokyo"}, call_id="call_aaaa")])
    )
    first = create(gw, input="weather in Tokyo?", tools=TOOLS)
    [call] = first.output
    assert call.type == "function_call" and call.id.startswith("fc_")
    assert (call.call_id, call.name, call.status) == ("call_aaaa", "get_weather", "completed")
    assert json.loads(call.arguments) == {"city": "Tokyo"}
    assert sent_json(gw)["tools"][0]["function"]["name"] == "get_weather"
    assert first.tools[0].name == "get_weather"

    gw.sim.next_reply(Reply(tokens=["Sunny"]))
    history: list[Any] = [
        {"role": "user", "content": "weather in Tokyo?"},
        call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21C"},
    ]
    second = create(gw, input=history, tools=TOOLS)
    assert second.output_text == "Sunny"
    messages = sent_json(gw)["messages"]
    assert messages[1]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": {"city": "Tokyo"},
    }
    assert messages[2] == {
        "role": "tool",
        "content": "sunny, 21C",
        "tool_name": "get_weather",
        "tool_call_id": "call_aaaa",
    }


def test_json_schema_format_reaches_ollama(gw: Harness) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    gw.sim.next_reply(Reply(tokens=['{"a":', " 1}"]))
    text = {"format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}}
    reply = create(gw, text=text)
    assert json.loads(reply.output_text) == {"a": 1}
    assert sent_json(gw)["format"] == schema
    assert reply.text.format.type == "json_schema"


def test_max_output_tokens_gives_incomplete(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=["a", "b"], done_reason="length"))
    reply = create(gw, max_output_tokens=2, temperature=0.2, top_p=0.9)
    assert reply.status == "incomplete"
    assert reply.incomplete_details.reason == "max_output_tokens"
    assert reply.output_text == "ab" and reply.max_output_tokens == 2
    options = sent_json(gw)["options"]
    assert (options["num_predict"], options["temperature"], options["top_p"]) == (2, 0.2, 0.9)


def test_reasoning_effort_and_thinking(gw: Harness) -> None:
    gw.sim.next_reply(Reply(thinking=["Let me ", "think"], tokens=["42"]))
    reply = create(gw, reasoning={"effort": "low"})
    assert [item.type for item in reply.output] == ["reasoning", "message"]
    assert reply.output[0].summary[0].text == "Let me think"
    assert reply.output_text == "42"
    assert sent_json(gw)["think"] == "low"


def test_image_input(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=["a cat"]))
    image = "data:image/png;base64,iVBORw0KGgo="
    content = [
        {"type": "input_text", "text": "what is this?"},
        {"type": "input_image", "image_url": image, "detail": "auto"},
    ]
    reply = create(gw, input=[{"role": "user", "content": content}])
    assert reply.output_text == "a cat"
    assert sent_json(gw)["messages"][0]["images"] == ["iVBORw0KGgo="]


def test_stream_events_order_and_text(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=["one", " two", " three"], prompt_eval_count=4, eval_count=3))
    events = list(create(gw, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[4:7] == ["response.output_text.delta"] * 3
    assert kinds[7:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == (
        "one two three"
    )
    final = events[-1].response
    assert final.output_text == "one two three" and final.usage.total_tokens == 7
    assert len({e.response.id for e in events if hasattr(e, "response")}) == 1


def test_stream_helper_final_response(gw: Harness) -> None:
    calls = [tool_call("get_weather", {"city": "Paris"}, call_id="call_bbbb")]
    gw.sim.next_reply(Reply(thinking=["hm"], tokens=["Checking"], tool_calls=calls))
    with client(gw).responses.stream(model=MODEL, input="weather?", tools=TOOLS) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final: Any = stream.get_final_response()
    assert deltas == ["Checking"]
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call"]
    assert final.output_text == "Checking"
    assert final.output[2].call_id == "call_bbbb"


def test_stream_raw_has_no_done_line(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=["x"]))
    status, headers, body = post_json(gw, PATH, {"model": MODEL, "input": "p", "stream": True})
    assert status == 200 and headers["content-type"] == "text/event-stream"
    blocks = [b for b in body.decode().split("\n\n") if b]
    assert blocks[-1].startswith("event: response.completed\ndata: ")
    assert all("[DONE]" not in b for b in blocks)


def test_stream_survives_byte_by_byte_upstream(gw: Harness) -> None:
    tokens = ["é", "🦀", ' "q"', "\n"]
    gw.sim.next_reply(Reply(thinking=["t"], tokens=tokens, fault=Fault(byte_by_byte=True)))
    events = list(create(gw, stream=True))
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "".join(tokens)
    assert [e.sequence_number for e in events] == list(range(len(events)))


@pytest.mark.parametrize(
    "fault",
    [Fault(error_line_after=2), Fault(eof_no_done=True), Fault(reset_after=2)],
    ids=["error_line", "eof_no_done", "reset"],
)
def test_failure_mid_stream_is_response_failed(gw: Harness, fault: Fault) -> None:
    gw.sim.next_reply(Reply(tokens=["a", "b", "c", "d"], fault=fault))
    received: list[Any] = []
    # After response.failed the stream is cut (no last chunk), as chat's is: the client
    # sees the event, then a broken connection.
    with pytest.raises(openai.APIConnectionError):
        for event in create(gw, stream=True):
            received.append(event)
    kinds = [e.type for e in received]
    assert kinds[-1] == "response.failed"
    assert "response.completed" not in kinds
    failed = received[-1].response
    assert failed.status == "failed" and failed.error.message
    if fault.error_line_after:
        assert "error was encountered while running the model" in failed.error.message
    text = "".join(e.delta for e in received if e.type == "response.output_text.delta")
    assert "abcd".startswith(text)
    assert sum(gw.read(lambda: dict(gw.gateway.state.upstream_errors)).values()) == 1


def test_non_stream_failure_is_502(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=["a", "b"], fault=Fault(error_line_after=1)))
    with pytest.raises(openai.APIStatusError) as info:
        create(gw)
    assert info.value.status_code == 502


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"store": True}, "store"),
        ({"background": True}, "background"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"include": ["reasoning.encrypted_content"]}, "include"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"n": 2}, "n"),
        ({"max_tool_calls": 3}, "max_tool_calls"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "file_search", "vector_store_ids": []}]}, "tools[0].type"),
        ({"tools": [{"type": "mcp", "server_label": "x"}]}, "tools[0].type"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "name": "nope"}, "tools": TOOLS}, "tool_choice.name"),
        ({"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}}, "tool_choice"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
         "input[0].content[0].type"),
    ],
)  # fmt: skip
def test_refusals_name_the_param(gw: Harness, extra: dict[str, Any], param: str) -> None:
    before = len(gw.sim.requests)
    with pytest.raises(openai.BadRequestError) as info:
        create(gw, extra_body=extra)
    body: Any = info.value.body
    assert body["param"] == param
    assert all(r.path != "/api/chat" for r in list(gw.sim.requests)[before:])


def test_store_false_and_empty_include_are_fine(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=["ok"]))
    reply = create(gw, store=False, include=[], parallel_tool_calls=False, truncation="auto")
    assert reply.output_text == "ok" and reply.parallel_tool_calls is False


def test_unknown_model_is_404(gw: Harness) -> None:
    with pytest.raises(openai.NotFoundError):
        create(gw, model="nope:1b")


def test_failure_after_a_heartbeat_is_response_failed_in_the_stream() -> None:
    """Ollama fails before its head, but a heartbeat already committed the 200: the error
    travels in the Responses shape (response.failed), never as chat's error event."""
    with Harness({"server.heartbeat_interval": "50ms"}) as h:
        h.sim.default_fault = Fault(first_delay=0.3, status=500)
        body = json.dumps({"model": "qwen3:32b", "input": "hi", "stream": True}).encode()
        status, _, rest = raw(
            h, "POST", "/v1/responses", {"Content-Type": "application/json"}, body
        )
        assert status == 200
        text = rest.decode()
        assert ": keep-alive" in text
        assert "event: response.failed" in text
        assert "response.completed" not in text
        assert 'data: {"error"' not in text
