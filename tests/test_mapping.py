"""Tests for the OpenAI -> Ollama request mapping (clawproxy.mapping, clawproxy.messages)."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clawproxy.config import ModelConfig
from clawproxy.errors import InvalidRequest
from clawproxy.openai.mapping import (
    MAX_TOKENS_LIMIT,
    MAX_TOOLS,
    ChatPlan,
    build_chat_plan,
)
from clawproxy.openai.messages import MAX_JSON_DEPTH, MAX_MESSAGES

DEFAULTS = ModelConfig(name="qwen3:32b", context_length=8192, temperature=0.6, top_p=0.95)
USER_HI = {"role": "user", "content": "hi"}
PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image bytes").decode()


def plan(**fields: Any) -> ChatPlan:
    body: dict[str, Any] = {"messages": [USER_HI], **fields}
    return build_chat_plan(body, DEFAULTS)


def rejected(body: object) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        build_chat_plan(body, DEFAULTS)
    assert caught.value.status == 400
    return caught.value


def user_parts(*parts: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(parts)}]


def image(url: object) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


# --- the happy path --------------------------------------------------------------------------


def test_minimal_request_gives_exact_payload_with_config_defaults() -> None:
    result = plan()
    assert result == ChatPlan(
        model="qwen3:32b",
        stream=False,
        include_usage=False,
        payload={
            "model": "qwen3:32b",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "options": {"num_ctx": 8192, "temperature": 0.6, "top_p": 0.95},
        },
    )
    assert orjson.dumps(result.payload) == (
        b'{"model":"qwen3:32b","messages":[{"role":"user","content":"hi"}],"stream":true,'
        b'"options":{"num_ctx":8192,"temperature":0.6,"top_p":0.95}}'
    )


def test_full_request_keeps_payload_and_option_key_order() -> None:
    result = plan(
        model="llama3.2",
        stream=True,
        stream_options={"include_usage": True},
        temperature=0.1,
        top_p=0.5,
        max_tokens=9,
        stop="END",
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        response_format={"type": "json_object"},
        tools=[{"type": "function", "function": {"name": "f"}}],
        reasoning_effort="high",
    )
    assert (result.model, result.stream, result.include_usage) == ("llama3.2", True, True)
    assert list(result.payload) == [
        "model",
        "messages",
        "stream",
        "options",
        "format",
        "tools",
        "think",
    ]
    assert result.payload["stream"] is True
    assert list(result.payload["options"]) == [
        "num_ctx",
        "temperature",
        "top_p",
        "num_predict",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
    ]


@pytest.mark.parametrize(
    ("fields", "key", "expected"),
    [
        ({"temperature": 0}, "temperature", 0.0),
        ({"temperature": 2}, "temperature", 2.0),
        ({"temperature": 1.3}, "temperature", 1.3),
        ({"top_p": 0.2}, "top_p", 0.2),
        ({"top_p": 1}, "top_p", 1.0),
        ({"max_tokens": 100}, "num_predict", 100),
        ({"max_completion_tokens": 50}, "num_predict", 50),
        ({"max_tokens": 100, "max_completion_tokens": 50}, "num_predict", 50),
        ({"max_tokens": MAX_TOKENS_LIMIT}, "num_predict", MAX_TOKENS_LIMIT),
        ({"stop": "###"}, "stop", ["###"]),
        ({"stop": ["a", "b", "c", "d"]}, "stop", ["a", "b", "c", "d"]),
        ({"seed": 42}, "seed", 42),
        ({"seed": -(2**63)}, "seed", -(2**63)),
        ({"seed": 2**63 - 1}, "seed", 2**63 - 1),
        ({"presence_penalty": -2}, "presence_penalty", -2.0),
        ({"frequency_penalty": 1.5}, "frequency_penalty", 1.5),
    ],
)
def test_each_parameter_arrives_in_options(fields: dict[str, Any], key: str, expected: Any) -> None:
    options = plan(**fields).payload["options"]
    assert options[key] == expected
    assert type(options[key]) is type(expected)
    assert options["num_ctx"] == DEFAULTS.context_length


@pytest.mark.parametrize(
    "fields",
    [
        {"stop": []},
        {"stop": None},
        {"max_tokens": None},
        {"seed": None},
        {"presence_penalty": None},
        {"temperature": None},
    ],
)
def test_null_or_empty_parameters_leave_options_at_defaults(fields: dict[str, Any]) -> None:
    assert plan(**fields).payload["options"] == plan().payload["options"]


def test_request_overrides_config_defaults() -> None:
    options = plan(temperature=0.0, top_p=0.0).payload["options"]
    assert (options["temperature"], options["top_p"]) == (0.0, 0.0)


def test_model_defaults_to_config_and_request_model_is_used() -> None:
    assert plan(model=None).model == "qwen3:32b"
    result = plan(model="library/qwen3:0.6b-q4_K_M")
    assert result.model == result.payload["model"] == "library/qwen3:0.6b-q4_K_M"


# --- messages --------------------------------------------------------------------------------


def test_roles_and_developer_becomes_system() -> None:
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "system", "content": "sys", "name": "ignored"},
        {"role": "user", "content": "hi", "name": "bob"},
        {"role": "assistant", "content": "hello"},
    ]
    assert plan(messages=messages).payload["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]


def test_text_parts_are_joined_with_newline_and_images_collected() -> None:
    messages = user_parts(
        {"type": "text", "text": "first"},
        image(f"data:image/png;base64,{PNG_B64}"),
        {"type": "text", "text": "second"},
        {"type": "image_url", "image_url": f"data:image/jpeg;base64,{PNG_B64}"},
    )
    assert plan(messages=messages).payload["messages"] == [
        {"role": "user", "content": "first\nsecond", "images": [PNG_B64, PNG_B64]}
    ]


@pytest.mark.parametrize("mime", ["png", "jpeg", "jpg", "webp", "gif", "PNG"])
def test_each_image_type_is_accepted(mime: str) -> None:
    messages = user_parts(image(f"data:image/{mime};base64,{PNG_B64}"))
    assert plan(messages=messages).payload["messages"][0]["images"] == [PNG_B64]


def test_system_and_tool_messages_take_text_parts() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    messages = [{"role": "system", "content": parts}, USER_HI]
    assert plan(messages=messages).payload["messages"][0] == {"role": "system", "content": "a\nb"}


def test_assistant_reasoning_becomes_thinking() -> None:
    messages = [
        USER_HI,
        {"role": "assistant", "content": "x", "reasoning_content": "hmm"},
        {"role": "assistant", "content": "y", "reasoning": "ok"},
        {"role": "assistant", "content": "z", "reasoning_content": "rc", "reasoning": "r"},
    ]
    out = plan(messages=messages).payload["messages"]
    assert out[1] == {"role": "assistant", "content": "x", "thinking": "hmm"}
    assert out[2] == {"role": "assistant", "content": "y", "thinking": "ok"}
    assert out[3]["thinking"] == "rc"


def test_tool_call_round_trip_and_tool_name_lookup() -> None:
    messages = [
        USER_HI,
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "need weather",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Tokyo"}'},
                },
                {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": ""}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "name": "clock", "content": "noon"},
        {"role": "tool", "tool_call_id": "call_9", "content": [{"type": "text", "text": "?"}]},
        {"role": "tool", "content": "no id"},
    ]
    out = plan(messages=messages).payload["messages"]
    assert out[1] == {
        "role": "assistant",
        "content": "",
        "thinking": "need weather",
        "tool_calls": [
            {"id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}},
            {"id": "call_2", "function": {"name": "now", "arguments": {}}},
        ],
    }
    assert list(out[2]) == ["role", "content", "tool_name", "tool_call_id"]
    assert out[2] == {
        "role": "tool",
        "content": "sunny",
        "tool_name": "get_weather",
        "tool_call_id": "call_1",
    }
    assert out[3]["tool_name"] == "clock"
    assert out[4] == {"role": "tool", "content": "?", "tool_call_id": "call_9"}
    assert out[5] == {"role": "tool", "content": "no id"}


def test_tool_call_without_id_is_sent_without_id() -> None:
    call = {"type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [USER_HI, {"role": "assistant", "tool_calls": [call]}]
    out = plan(messages=messages).payload["messages"][1]
    assert out["tool_calls"] == [{"function": {"name": "f", "arguments": {}}}]


# --- tools, format, reasoning ----------------------------------------------------------------


def test_tools_are_rebuilt_from_validated_parts() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    raw = {
        "type": "function",
        "extra": "dropped",
        "function": {"name": "get_weather", "description": "d", "parameters": schema, "x": 1},
    }
    tools = plan(tools=[raw, {"type": "function", "function": {"name": "bare"}}]).payload["tools"]
    assert tools == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "d", "parameters": schema},
        },
        {"type": "function", "function": {"name": "bare"}},
    ]
    assert tools[0]["function"]["parameters"] is not schema


@pytest.mark.parametrize(("choice", "sent"), [(None, True), ("auto", True), ("none", False)])
def test_tool_choice_auto_and_none(choice: object, sent: bool) -> None:
    result = plan(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice=choice)
    assert ("tools" in result.payload) is sent


def test_empty_tools_array_sends_no_tools() -> None:
    assert "tools" not in plan(tools=[]).payload


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ({"type": "text"}, None),
        ({"type": "json_object"}, "json"),
        (
            {
                "type": "json_schema",
                "json_schema": {"name": "n", "strict": True, "schema": {"a": 1}},
            },
            {"a": 1},
        ),
    ],
)
def test_response_format(response_format: dict[str, Any], expected: object) -> None:
    assert plan(response_format=response_format).payload.get("format") == expected


@pytest.mark.parametrize(
    ("fields", "think"),
    [
        ({"reasoning_effort": "none"}, False),
        ({"reasoning_effort": "minimal"}, "low"),
        ({"reasoning_effort": "low"}, "low"),
        ({"reasoning_effort": "medium"}, "medium"),
        ({"reasoning_effort": "high"}, "high"),
        ({"reasoning_effort": "xhigh"}, "max"),
        ({"reasoning_effort": "max"}, "max"),
        ({"reasoning": {"effort": "none"}}, False),
        ({"reasoning": {"effort": "medium"}}, "medium"),
        ({"reasoning_effort": "low", "reasoning": {"effort": "high"}}, "low"),
    ],
)
def test_reasoning_effort_maps_to_think(fields: dict[str, Any], think: object) -> None:
    sent = plan(**fields).payload["think"]
    assert sent == think
    assert type(sent) is type(think)


@pytest.mark.parametrize("fields", [{}, {"reasoning": {}}, {"reasoning_effort": None}])
def test_absent_reasoning_effort_sends_no_think(fields: dict[str, Any]) -> None:
    assert "think" not in plan(**fields).payload


def test_stream_flags() -> None:
    assert (plan(stream=True).stream, plan(stream=True).include_usage) == (True, False)
    usage = plan(stream=True, stream_options={"include_usage": True})
    assert (usage.stream, usage.include_usage) == (True, True)
    assert plan(stream=False, stream_options=None).stream is False


def test_harmless_fields_are_dropped() -> None:
    fields = {
        "user": "u",
        "metadata": {"a": "b"},
        "store": True,
        "parallel_tool_calls": False,
        "service_tier": "auto",
        "logprobs": False,
        "top_logprobs": None,
        "logit_bias": {},
        "n": 1,
        "modalities": ["text"],
        "whatever_new_field": [1, 2],
    }
    assert plan(**fields).payload == plan().payload


@pytest.mark.parametrize(
    "fields",
    [
        {"options": {"num_ctx": 131072, "num_gpu": 99}},
        {"keep_alive": 0},
        {"keep_alive": "-1"},
        {"num_ctx": 131072},
        {"api_base": "http://evil.example"},
        {"base_url": "http://evil.example"},
        {"think": True},
        {"format": "json"},
    ],
)
def test_forbidden_knobs_never_reach_the_payload(fields: dict[str, Any]) -> None:
    payload = plan(**fields).payload
    assert payload == plan().payload
    text = orjson.dumps(payload)
    for needle in (b"keep_alive", b"131072", b"num_gpu", b"evil", b"api_base", b"think"):
        assert needle not in text


# --- errors ----------------------------------------------------------------------------------

BAD_ARGS = "messages[1].tool_calls[0].function.arguments"


def assistant_call(arguments: object) -> list[dict[str, Any]]:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    return [USER_HI, {"role": "assistant", "content": None, "tool_calls": [call]}]


def nested(depth: int) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for _ in range(depth):
        tree = {"a": tree}
    return tree


ERROR_CASES: list[tuple[str, dict[str, Any], str | None, str]] = [
    # model
    ("model type", {"model": 3}, "model", "must be a string"),
    ("model empty", {"model": ""}, "model", "1 to 200"),
    ("model long", {"model": "a" * 201}, "model", "1 to 200"),
    ("model dots", {"model": "../x"}, "model", "must look like"),
    ("model dotdot", {"model": "a..b"}, "model", "must look like"),
    ("model at", {"model": "qwen3@sha256"}, "model", "must look like"),
    ("model slashes", {"model": "a//b"}, "model", "must look like"),
    ("model space", {"model": "qwen 3"}, "model", "must look like"),
    ("model host", {"model": "evil.example/library/x"}, "model", "must look like"),
    ("model host ns", {"model": "evil.example/x"}, "model", "registry host"),
    ("model url", {"model": "http://x/y"}, "model", "must look like"),
    ("model two tags", {"model": "a:b:c"}, "model", "must look like"),
    ("model unicode", {"model": "qwen\u0663"}, "model", "must look like"),
    ("model newline", {"model": "qwen3\n"}, "model", "must look like"),
    # messages
    ("no messages", {"messages": None}, "messages", "non-empty array"),
    ("empty messages", {"messages": []}, "messages", "non-empty array"),
    ("messages object", {"messages": {"role": "user"}}, "messages", "non-empty array"),
    ("too many", {"messages": [USER_HI] * (MAX_MESSAGES + 1)}, "messages", "at most 2048"),
    ("message type", {"messages": ["hi"]}, "messages[0]", "must be an object"),
    (
        "bad role",
        {"messages": [USER_HI, {"role": "function", "content": "x"}]},
        "messages[1].role",
        "messages[1].role must be one of system, developer, user, assistant, tool",
    ),
    ("no role", {"messages": [{"content": "x"}]}, "messages[0].role", "must be one of"),
    ("content null", {"messages": [{"role": "user"}]}, "messages[0].content", "is required"),
    (
        "assistant null content",
        {"messages": [USER_HI, {"role": "assistant", "content": None}]},
        "messages[1].content",
        "is required",
    ),
    (
        "content number",
        {"messages": [{"role": "user", "content": 5}]},
        "messages[0].content",
        "string or an array",
    ),
    ("empty parts", {"messages": user_parts()}, "messages[0].content", "empty array"),
    ("part type", {"messages": user_parts("x")}, "messages[0].content[0]", "must be an object"),
    (
        "audio part",
        {"messages": user_parts({"type": "input_audio", "input_audio": {}})},
        "messages[0].content[0].type",
        "'input_audio' is not supported",
    ),
    (
        "text not str",
        {"messages": user_parts({"type": "text", "text": 1})},
        "messages[0].content[0].text",
        "must be a string",
    ),
    (
        "http image",
        {"messages": user_parts(image("https://example.com/a.png"))},
        "messages[0].content[0].image_url.url",
        "image URLs are not supported; send the image as a base64 data: URI",
    ),
    (
        "bare http image",
        {"messages": user_parts({"type": "image_url", "image_url": "http://x/a.png"})},
        "messages[0].content[0].image_url",
        "image URLs are not supported",
    ),
    (
        "svg image",
        {"messages": user_parts(image(f"data:image/svg+xml;base64,{PNG_B64}"))},
        "messages[0].content[0].image_url.url",
        "unsupported image type",
    ),
    (
        "bad base64",
        {"messages": user_parts(image("data:image/png;base64,not*base64"))},
        "messages[0].content[0].image_url.url",
        "not valid base64",
    ),
    (
        "bad padding",
        {"messages": user_parts(image("data:image/png;base64,QUJD="))},
        "messages[0].content[0].image_url.url",
        "not valid base64",
    ),
    (
        "missing padding",
        {"messages": user_parts(image("data:image/png;base64,QUI"))},
        "messages[0].content[0].image_url.url",
        "not valid base64",
    ),
    (
        "empty image",
        {"messages": user_parts(image("data:image/png;base64,"))},
        "messages[0].content[0].image_url.url",
        "empty image",
    ),
    (
        "not a data uri",
        {"messages": user_parts(image("file:///etc/passwd"))},
        "messages[0].content[0].image_url.url",
        "data:image/",
    ),
    (
        "image missing url",
        {"messages": user_parts({"type": "image_url"})},
        "messages[0].content[0].image_url",
        "must be an object",
    ),
    (
        "image on system",
        {"messages": [{"role": "system", "content": [image(f"data:image/png;base64,{PNG_B64}")]}]},
        "messages[0].content[0]",
        "only allowed in user messages",
    ),
    (
        "tool_calls on user",
        {"messages": [{"role": "user", "content": "x", "tool_calls": []}]},
        "messages[0].tool_calls",
        "only allowed on assistant",
    ),
    ("arguments not json", {"messages": assistant_call("{nope")}, BAD_ARGS, "not valid JSON"),
    ("arguments array", {"messages": assistant_call("[1]")}, BAD_ARGS, "JSON object"),
    ("arguments object", {"messages": assistant_call({"a": 1})}, BAD_ARGS, "JSON string"),
    (
        "arguments deep",
        {"messages": assistant_call(orjson.dumps(nested(MAX_JSON_DEPTH + 2)).decode())},
        BAD_ARGS,
        "nested too deeply",
    ),
    (
        "tool call name",
        {"messages": [USER_HI, {"role": "assistant", "tool_calls": [{"function": {}}]}]},
        "messages[1].tool_calls[0].function.name",
        "non-empty string",
    ),
    (
        "tool call type",
        {"messages": [USER_HI, {"role": "assistant", "tool_calls": [{"type": "custom"}]}]},
        "messages[1].tool_calls[0].type",
        "'function'",
    ),
    (
        "tool_calls not array",
        {"messages": [USER_HI, {"role": "assistant", "tool_calls": {}}]},
        "messages[1].tool_calls",
        "must be an array",
    ),
    (
        "reasoning not str",
        {"messages": [USER_HI, {"role": "assistant", "content": "", "reasoning": {}}]},
        "messages[1].reasoning",
        "must be a string",
    ),
    (
        "tool content null",
        {"messages": [USER_HI, {"role": "tool", "content": None}]},
        "messages[1].content",
        "is required",
    ),
    (
        "tool name type",
        {"messages": [USER_HI, {"role": "tool", "content": "x", "name": 1}]},
        "messages[1].name",
        "must be a string",
    ),
    # options
    ("temperature high", {"temperature": 2.5}, "temperature", "between 0 and 2"),
    ("temperature low", {"temperature": -0.1}, "temperature", "between 0 and 2"),
    ("temperature str", {"temperature": "1"}, "temperature", "between 0 and 2"),
    ("temperature nan", {"temperature": float("nan")}, "temperature", "between 0 and 2"),
    ("temperature inf", {"temperature": float("inf")}, "temperature", "between 0 and 2"),
    ("top_p high", {"top_p": 1.01}, "top_p", "between 0 and 1"),
    ("max_tokens zero", {"max_tokens": 0}, "max_tokens", "integer between 1 and 1000000"),
    ("max_tokens float", {"max_tokens": 10.0}, "max_tokens", "integer between 1"),
    ("max_tokens huge", {"max_tokens": MAX_TOKENS_LIMIT + 1}, "max_tokens", "integer between"),
    (
        "max_completion_tokens neg",
        {"max_completion_tokens": -1, "max_tokens": 5},
        "max_completion_tokens",
        "integer between",
    ),
    ("stop empty", {"stop": ""}, "stop", "non-empty string"),
    ("stop empty item", {"stop": ["a", ""]}, "stop[1]", "non-empty string"),
    ("stop item type", {"stop": [1]}, "stop[0]", "non-empty string"),
    ("stop too many", {"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ("stop object", {"stop": {}}, "stop", "string or an array"),
    ("seed float", {"seed": 1.5}, "seed", "64-bit integer"),
    ("seed big", {"seed": 2**63}, "seed", "64-bit integer"),
    ("presence", {"presence_penalty": 2.1}, "presence_penalty", "between -2 and 2"),
    ("frequency", {"frequency_penalty": -3}, "frequency_penalty", "between -2 and 2"),
    # response_format
    ("format type", {"response_format": {"type": "xml"}}, "response_format.type", "one of"),
    ("format str", {"response_format": "json"}, "response_format", "must be an object"),
    (
        "schema missing",
        {"response_format": {"type": "json_schema"}},
        "response_format.json_schema",
        "must be an object",
    ),
    (
        "schema not object",
        {"response_format": {"type": "json_schema", "json_schema": {"schema": [1]}}},
        "response_format.json_schema.schema",
        "JSON object",
    ),
    (
        "schema deep",
        {"response_format": {"type": "json_schema", "json_schema": {"schema": nested(200)}}},
        "response_format.json_schema.schema",
        "nested too deeply",
    ),
    # tools
    ("tools object", {"tools": {}}, "tools", "must be an array"),
    ("tools too many", {"tools": [{"function": {"name": "f"}}] * (MAX_TOOLS + 1)}, "tools", "128"),
    ("tool type", {"tools": [{"type": "custom", "function": {}}]}, "tools[0].type", "'function'"),
    ("tool function", {"tools": [{"type": "function"}]}, "tools[0].function", "an object"),
    (
        "tool name",
        {"tools": [{"type": "function", "function": {"name": ""}}]},
        "tools[0].function.name",
        "non-empty string",
    ),
    (
        "tool parameters",
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]},
        "tools[0].function.parameters",
        "JSON object",
    ),
    (
        "tool description",
        {"tools": [{"type": "function", "function": {"name": "f", "description": 1}}]},
        "tools[0].function.description",
        "must be a string",
    ),
    (
        "tool_choice required without tools",
        {"tool_choice": "required"},
        "tool_choice",
        "forces a tool call, so tools must not be empty",
    ),
    (
        "tool_choice function without tools",
        {"tool_choice": {"type": "function", "function": {"name": "f"}}},
        "tool_choice",
        "forces a tool call, so tools must not be empty",
    ),
    (
        "tool_choice names an unknown function",
        {
            "tool_choice": {"type": "function", "function": {"name": "g"}},
            "tools": [{"type": "function", "function": {"name": "f"}}],
        },
        "tool_choice.function.name",
        "must name a function in tools",
    ),
    (
        "tool_choice function shape",
        {"tool_choice": {"type": "x"}, "tools": [{"type": "function", "function": {"name": "f"}}]},
        "tool_choice",
        "must name a function",
    ),
    (
        "tool_choice forced with response_format",
        {
            "tool_choice": "required",
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "response_format": {"type": "json_object"},
        },
        "response_format",
        "cannot be combined with a forced tool_choice",
    ),
    ("tool_choice other", {"tool_choice": "sometimes"}, "tool_choice", "one of auto, none"),
    # reasoning
    ("effort unknown", {"reasoning_effort": "ultra"}, "reasoning_effort", "must be one of none"),
    ("effort type", {"reasoning_effort": True}, "reasoning_effort", "must be one of"),
    ("reasoning type", {"reasoning": "high"}, "reasoning", "must be an object"),
    ("reasoning effort", {"reasoning": {"effort": "x"}}, "reasoning.effort", "must be one of"),
    # stream
    ("stream str", {"stream": "true"}, "stream", "must be a boolean"),
    ("stream int", {"stream": 1}, "stream", "must be a boolean"),
    (
        "options without stream",
        {"stream_options": {"include_usage": True}},
        "stream_options",
        "only allowed when stream is true",
    ),
    (
        "options stream false",
        {"stream": False, "stream_options": {}},
        "stream_options",
        "only allowed when stream is true",
    ),
    ("options type", {"stream": True, "stream_options": []}, "stream_options", "an object"),
    (
        "include_usage type",
        {"stream": True, "stream_options": {"include_usage": "yes"}},
        "stream_options.include_usage",
        "must be a boolean",
    ),
    # refused fields
    ("n two", {"n": 2}, "n", "n must be 1: Ollama returns a single choice"),
    ("n zero", {"n": 0}, "n", "must be 1"),
    ("n float", {"n": 1.0}, "n", "must be 1"),
    ("logit_bias", {"logit_bias": {"50256": -100}}, "logit_bias", "not supported"),
    ("logprobs", {"logprobs": True}, "logprobs", "not supported"),
    ("top_logprobs", {"top_logprobs": 3}, "top_logprobs", "not supported"),
    ("audio", {"audio": {"voice": "alloy"}}, "audio", "not supported"),
    ("modalities", {"modalities": ["text", "audio"]}, "modalities", "only contain 'text'"),
    ("prediction", {"prediction": {"type": "content"}}, "prediction", "not supported"),
    ("functions", {"functions": [{"name": "f"}]}, "functions", "use tools"),
    ("function_call", {"function_call": "auto"}, "function_call", "not supported"),
]


@pytest.mark.parametrize(
    ("fields", "param", "fragment"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_invalid_requests_are_400_with_param(
    fields: dict[str, Any], param: str | None, fragment: str
) -> None:
    error = rejected({"messages": [USER_HI], **fields})
    assert error.param == param
    assert fragment in error.message
    assert orjson.loads(error.body())["error"]["param"] == param


@pytest.mark.parametrize("body", [None, [], "x", 1, True, [{"messages": []}]])
def test_top_level_must_be_an_object(body: object) -> None:
    assert "must be a JSON object" in rejected(body).message


@pytest.mark.parametrize(
    "key",
    [
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "n",
    ],
)
@pytest.mark.parametrize("flag", [True, False])
def test_bool_is_rejected_where_a_number_is_expected(key: str, flag: bool) -> None:
    # True == 1 and False == 0 in Python: exactly the values that must not slip through.
    assert rejected({"messages": [USER_HI], key: flag}).param == key


# --- property: nothing but InvalidRequest escapes --------------------------------------------

KNOWN_KEYS = [
    "model",
    "messages",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
    "tools",
    "tool_choice",
    "reasoning_effort",
    "reasoning",
    "n",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "modalities",
    "options",
    "keep_alive",
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
# Values that are valid for each key, mixed with arbitrary JSON, so that the property sees
# both successful plans and every kind of rejection.
GOOD_VALUES: dict[str, list[Any]] = {
    "model": ["llama3.2", "ns/m:tag"],
    "stream": [True],
    "stream_options": [None, {"include_usage": True}],
    "temperature": [0, 1.5],
    "top_p": [0.5],
    "max_tokens": [16],
    "max_completion_tokens": [32],
    "stop": ["x", ["a", "b"]],
    "seed": [3],
    "presence_penalty": [1],
    "frequency_penalty": [-1.5],
    "response_format": [
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"schema": {}}},
    ],
    "tools": [[{"type": "function", "function": {"name": "f", "parameters": {"a": [1]}}}]],
    "tool_choice": ["auto", "none"],
    "reasoning_effort": ["none", "high"],
    "reasoning": [{"effort": "low"}],
    "n": [1],
    "logit_bias": [{}],
    "logprobs": [False],
    "top_logprobs": [0],
    "modalities": [["text"]],
    "options": [{"num_ctx": 1 << 20}],
    "keep_alive": [0, "-1"],
}


def maybe_good(values: list[Any]) -> st.SearchStrategy[Any]:
    return st.sampled_from(values) | st.sampled_from(values) | json_values


GOOD_MESSAGES: list[dict[str, Any]] = [
    {"role": "developer", "content": "d"},
    {"role": "user", "content": [{"type": "text", "text": "t"}]},
    {
        "role": "assistant",
        "content": None,
        "reasoning": "r",
        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": '{"k": [1, {}]}'}}],
    },
    {"role": "tool", "tool_call_id": "c", "content": "ok"},
]
# Mostly valid messages, sometimes one with an arbitrary field or an arbitrary message.
message_values = (
    st.sampled_from(GOOD_MESSAGES)
    | st.sampled_from(GOOD_MESSAGES)
    | st.builds(
        lambda good, noise: {**good, **noise},
        st.sampled_from(GOOD_MESSAGES),
        st.dictionaries(
            st.sampled_from(["role", "content", "tool_calls", "tool_call_id", "name", "reasoning"]),
            json_values,
            max_size=1,
        ),
    )
    | json_values
)
good_bodies = st.fixed_dictionaries(
    {"messages": st.lists(message_values, min_size=1, max_size=3)},
    optional={key: st.sampled_from(GOOD_VALUES[key]) for key in KNOWN_KEYS if key != "messages"},
)
# A valid-looking body with at most one field replaced by arbitrary JSON.
nearly_good_bodies = st.builds(
    lambda good, noise: {**good, **noise},
    good_bodies,
    st.dictionaries(st.sampled_from(KNOWN_KEYS), json_values, max_size=1),
)
bodies = (
    json_values
    | st.dictionaries(st.sampled_from(KNOWN_KEYS), json_values, max_size=8)
    | nearly_good_bodies
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
def test_any_body_gives_a_plan_or_invalid_request(body: object) -> None:
    try:
        result = build_chat_plan(body, DEFAULTS)
    except InvalidRequest as error:
        assert error.status == 400
        return
    orjson.loads(orjson.dumps(result.payload))
    assert "keep_alive" not in result.payload
    assert set(result.payload["options"]) <= {
        "num_ctx",
        "temperature",
        "top_p",
        "num_predict",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
    }
    assert result.payload["stream"] is True
    assert result.payload["options"]["num_ctx"] == DEFAULTS.context_length
