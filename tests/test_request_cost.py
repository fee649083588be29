"""What one chat request may cost the event loop before it is admitted.

The mapping runs on the loop, so its work stalls every stream there. Two rules keep it
small, and these tests hold them without measuring time: cheap fields are checked before
anything is walked (a bad one is the error reported, whatever the walk would have said, and
no tree is visited), and every walk has a limit over the whole request that is refused
where it is crossed, naming the field in ``param`` and the limit in the message.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from harness import HELLO, Harness, error_of, post_json

from clawproxy.config import ModelConfig
from clawproxy.errors import InvalidRequest
from clawproxy.openai import messages
from clawproxy.openai.mapping import MAX_SCHEMA_VALUES, ChatPlan, build_chat_plan
from clawproxy.openai.messages import (
    MAX_ARGUMENT_VALUES,
    MAX_CONTENT_PARTS,
    MAX_JSON_DEPTH,
    MAX_TOOL_CALLS,
)

CHAT = "/v1/chat/completions"
DEFAULTS = ModelConfig(name="qwen3:32b", context_length=8192, temperature=0.6, top_p=0.95)
USER_HI = {"role": "user", "content": "hi"}
ALL_MESSAGES = "(the limit for all messages together)"
ALL_SCHEMAS = "(the limit for all tools and response_format together)"


def plan(body: dict[str, Any]) -> ChatPlan:
    return build_chat_plan(body, DEFAULTS)


def rejected(body: object) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        build_chat_plan(body, DEFAULTS)
    assert caught.value.status == 400
    return caught.value


def flat(values: int) -> dict[str, Any]:
    """A JSON object holding exactly ``values`` values, itself included."""
    return {f"k{i}": 0 for i in range(values - 1)}


def nested(depth: int) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for _ in range(depth):
        tree = {"a": tree}
    return tree


def tool(parameters: object, name: str = "f") -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def schema_format(schema: object) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}


def calls(count: int, arguments: object = None) -> list[dict[str, Any]]:
    args = "{}" if arguments is None else orjson.dumps(arguments).decode()
    return [{"id": f"c{i}", "function": {"name": "f", "arguments": args}} for i in range(count)]


def assistant(tool_calls: list[dict[str, Any]]) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": tool_calls}


def user_parts(count: int) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "text", "text": "t"}] * count}


# --- every limit: at it passes, past it is a 400 naming field and limit ------------------------

half = MAX_SCHEMA_VALUES // 2
# name -> (the body at the limit, the body one past it, param, message fragment)
LIMITS: dict[str, tuple[dict[str, Any], dict[str, Any], str, str]] = {
    "schema values": (
        {"tools": [tool(flat(MAX_SCHEMA_VALUES))]},
        {"tools": [tool(flat(MAX_SCHEMA_VALUES + 1))]},
        "tools[0].function.parameters",
        f"takes the JSON schemas past {MAX_SCHEMA_VALUES} values {ALL_SCHEMAS}",
    ),
    "schema values shared by tools and response_format": (
        {
            "response_format": schema_format(flat(half)),
            "tools": [tool(flat(1)), tool(flat(MAX_SCHEMA_VALUES - half - 1))],
        },
        {
            "response_format": schema_format(flat(half)),
            "tools": [tool(flat(1)), tool(flat(MAX_SCHEMA_VALUES - half))],
        },
        "tools[1].function.parameters",
        f"past {MAX_SCHEMA_VALUES} values",
    ),
    "response_format schema values": (
        {"response_format": schema_format(flat(MAX_SCHEMA_VALUES))},
        {"response_format": schema_format({"a": [0] * MAX_SCHEMA_VALUES})},
        "response_format.json_schema.schema",
        f"past {MAX_SCHEMA_VALUES} values",
    ),
    "content parts": (
        {"messages": [user_parts(MAX_CONTENT_PARTS // 2)] * 2},
        {"messages": [user_parts(MAX_CONTENT_PARTS // 2)] * 2 + [user_parts(1)]},
        "messages[2].content",
        f"takes the request past {MAX_CONTENT_PARTS} content parts {ALL_MESSAGES}",
    ),
    "tool calls": (
        {"messages": [USER_HI, assistant(calls(MAX_TOOL_CALLS))]},
        {"messages": [USER_HI, assistant(calls(MAX_TOOL_CALLS)), assistant(calls(1))]},
        "messages[2].tool_calls",
        f"takes the request past {MAX_TOOL_CALLS} tool calls {ALL_MESSAGES}",
    ),
    "argument values": (
        {"messages": [USER_HI, assistant(calls(2, flat(MAX_ARGUMENT_VALUES // 2)))]},
        {"messages": [USER_HI, assistant(calls(2, flat(MAX_ARGUMENT_VALUES // 2 + 1)))]},
        "messages[1].tool_calls[1].function.arguments",
        f"takes the tool-call arguments past {MAX_ARGUMENT_VALUES} values {ALL_MESSAGES}",
    ),
    "modalities": (
        {"modalities": ["text", "text"]},
        {"modalities": ["text"] * 3},
        "modalities",
        "may only contain 'text'",
    ),
}


@pytest.mark.parametrize(("at", "past", "param", "fragment"), LIMITS.values(), ids=LIMITS)
def test_each_limit_passes_at_it_and_refuses_past_it(
    at: dict[str, Any], past: dict[str, Any], param: str, fragment: str
) -> None:
    plan({"messages": [USER_HI], **at})
    error = rejected({"messages": [USER_HI], **past})
    assert error.param == param
    assert error.message.startswith(param) and fragment in error.message
    assert orjson.loads(error.body())["error"] == {
        "message": error.message,
        "type": "invalid_request_error",
        "param": param,
        "code": None,
    }


# --- cheap fields first ---------------------------------------------------------------------

# Each would fail its own walk (too deep, or past its limit) if it were walked.
EXPENSIVE: dict[str, Any] = {
    "messages": [
        USER_HI,
        assistant(calls(1, nested(MAX_JSON_DEPTH + 2))),
        user_parts(MAX_CONTENT_PARTS + 1),
    ],
    "response_format": schema_format(nested(MAX_JSON_DEPTH + 2)),
    "tools": [tool(nested(MAX_JSON_DEPTH + 2)), tool(flat(MAX_SCHEMA_VALUES + 1))],
}
CHEAP_FAULTS: list[tuple[dict[str, Any], str]] = [
    ({"model": 3}, "model"),
    ({"model": "evil.example/x"}, "model"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"temperature": 9}, "temperature"),
    ({"top_p": -1}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"stop": [1]}, "stop[0]"),
    ({"seed": 1.5}, "seed"),
    ({"frequency_penalty": 3}, "frequency_penalty"),
    ({"reasoning_effort": "ultra"}, "reasoning_effort"),
    ({"n": 2}, "n"),
    ({"logit_bias": {str(i): 1 for i in range(50_000)}}, "logit_bias"),
    ({"modalities": ["text"] * 100_000}, "modalities"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": schema_format([1])}, "response_format.json_schema.schema"),
    ({"tools": [tool({}), tool({}, name="")]}, "tools[1].function.name"),
    ({"tools": [tool({})] * 129}, "tools"),
]


# On the compiled build the spy would see nothing: compiled callers call the real one.
SPY_BOUND = "the spy replaces messages.check_json, which compiled callers bind at compile time"


@pytest.fixture
def walked(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The params of every JSON tree walked (tool schemas, response schema, arguments)."""
    seen: list[str] = []
    real = messages.check_json

    def spy(value: object, param: str, limit: messages.JsonLimit) -> None:
        seen.append(param)
        real(value, param, limit)

    monkeypatch.setattr(messages, "check_json", spy)
    yield seen


@pytest.mark.pure_python(SPY_BOUND)
@pytest.mark.parametrize(("fault", "param"), CHEAP_FAULTS, ids=[param for _, param in CHEAP_FAULTS])
def test_a_bad_cheap_field_is_reported_before_any_walk(
    fault: dict[str, Any], param: str, walked: list[str]
) -> None:
    error = rejected({**EXPENSIVE, **fault})
    assert error.param == param
    assert walked == []


@pytest.mark.pure_python(SPY_BOUND)
def test_without_a_cheap_fault_the_walks_do_run(walked: list[str]) -> None:
    # The spy sees the walks, so its silence above means something.
    assert rejected(EXPENSIVE).param == "messages[1].tool_calls[0].function.arguments"
    assert walked == ["messages[1].tool_calls[0].function.arguments"]
    plan({"messages": [USER_HI], "tools": [tool({"type": "object"})]})
    assert walked[-1] == "tools[0].function.parameters"


class CountingDict(dict[str, Any]):
    """A dict that counts every key and value a Python walk takes from it (orjson, in C,
    reads it directly and counts nothing)."""

    visits = 0

    def __iter__(self) -> Iterator[str]:
        for key in super().__iter__():
            CountingDict.visits += 1
            yield key

    def values(self) -> Any:
        for value in super().values():
            CountingDict.visits += 1
            yield value

    def items(self) -> Any:
        for pair in super().items():
            CountingDict.visits += 1
            yield pair


@pytest.mark.parametrize("kind", ["tools", "response_format"])
def test_a_schema_over_its_limit_is_refused_without_visiting_it(kind: str) -> None:
    big = CountingDict(flat(MAX_SCHEMA_VALUES + 1))
    CountingDict.visits = 0
    field = {"tools": [tool(big)]} if kind == "tools" else {"response_format": schema_format(big)}
    error = rejected({"messages": [USER_HI], **field})
    assert f"past {MAX_SCHEMA_VALUES} values" in error.message
    assert CountingDict.visits == 0


def test_check_json_counts_containers_before_visiting_them() -> None:
    # Tool-call arguments go through the same check, with their own limit.
    limit = messages.JsonLimit(10, "the things", "this test")
    inner = CountingDict(flat(10))
    CountingDict.visits = 0
    with pytest.raises(InvalidRequest, match="p takes the things past 10 values") as caught:
        messages.check_json({"a": [1, inner]}, "p", limit)
    assert caught.value.param == "p"
    assert CountingDict.visits == 0
    # Within the limit, every key and value is visited once.
    messages.check_json(inner, "p", messages.JsonLimit(10, "the things", "this test"))
    assert CountingDict.visits == 2 * 9


def test_a_tree_within_its_limit_is_walked_once_and_copied() -> None:
    schema = CountingDict(flat(100))
    CountingDict.visits = 0
    sent = plan({"messages": [USER_HI], "tools": [tool(schema)]}).payload["tools"]
    assert CountingDict.visits == 2 * 99
    parameters = sent[0]["function"]["parameters"]
    assert type(parameters) is dict and parameters == schema and parameters is not schema


# --- through the server ---------------------------------------------------------------------

# The body from the report: a 1 MiB request whose tool holds a 90,000-key schema.
HUGE_SCHEMA = {"type": "object", "properties": {f"k{i}": 0 for i in range(90_000)}}


def test_server_refuses_a_bad_field_behind_a_huge_schema_without_walking_it(
    gw: Harness,
) -> None:
    body = {
        **HELLO,
        "tools": [tool(HUGE_SCHEMA), tool(nested(MAX_JSON_DEPTH + 2))],
        "reasoning_effort": "ultra",
    }
    data = orjson.dumps(body)
    assert 900_000 < len(data) < gw.gateway.config.server.max_body_bytes
    status, headers, raw = post_json(gw, CHAT, data)
    assert status == 400
    err = error_of(raw)
    assert (err["param"], err["type"]) == ("reasoning_effort", "invalid_request_error")
    assert headers["x-should-retry"] == "false"
    assert all(r.path != "/api/chat" for r in gw.sim.requests)


def test_server_refuses_a_schema_over_the_limit_naming_it(gw: Harness) -> None:
    status, _, raw = post_json(gw, CHAT, orjson.dumps({**HELLO, "tools": [tool(HUGE_SCHEMA)]}))
    assert status == 400
    err = error_of(raw)
    assert err["param"] == "tools[0].function.parameters"
    assert f"past {MAX_SCHEMA_VALUES} values" in err["message"]
    assert all(r.path != "/api/chat" for r in gw.sim.requests)
    # The connection and the gateway are fine: the next request is answered.
    status, _, _ = post_json(gw, CHAT, HELLO)
    assert status == 200
