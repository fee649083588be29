"""LangChain's ``ChatOpenAI`` (``langchain-openai``) against the gateway on the simulator:
plain and streamed chat, structured output both ways (``response_format`` json_schema, the
default method, and a forced function call), and tools bound with ``tool_choice="any"``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from harness import Harness
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from clawproxy.simulator import Reply

MODEL = "qwen3:32b"
PROMPT = "Say hello to LangChain."


class City(BaseModel):
    """A city and its country."""

    name: str = Field(description="The city's name")
    country: str = Field(description="The country the city is in")
    population: int = Field(description="How many people live there")


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


@pytest.fixture
def h() -> Iterator[Harness]:
    with Harness() as harness:
        yield harness


def chat(h: Harness) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=h.base_url + "/v1", api_key="unused", model=MODEL, max_retries=0, timeout=20
    )


def ollama_requests(h: Harness) -> list[dict[str, Any]]:
    """The bodies the gateway sent to the simulator's /api/chat."""
    return h.read(lambda: [r.json for r in h.sim.requests if r.path == "/api/chat"])


def test_invoke(h: Harness) -> None:
    message = chat(h).invoke(PROMPT)
    assert isinstance(message, AIMessage)
    assert isinstance(message.content, str)
    assert "clawproxy demo model" in message.content
    assert "LangChain" in message.content  # the demo model echoes the prompt
    assert message.response_metadata["finish_reason"] == "stop"
    assert message.response_metadata["model_name"] == MODEL
    usage = message.usage_metadata
    assert usage is not None and usage["output_tokens"] > 0 and usage["input_tokens"] > 0


def test_stream(h: Harness) -> None:
    model = chat(h)
    expected = model.invoke(PROMPT).content
    chunks = list(model.stream(PROMPT))
    assert all(isinstance(chunk, AIMessageChunk) for chunk in chunks)
    assert len(chunks) > 2
    text = "".join(chunk.content for chunk in chunks if isinstance(chunk.content, str))
    assert text == expected
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.response_metadata["finish_reason"] == "stop"


def test_structured_output_json_schema(h: Harness) -> None:
    """The default method: ``response_format`` json_schema, which the gateway hands Ollama
    as ``format`` (the schema itself); the answer is parsed into the pydantic model."""
    answer = {"name": "Paris", "country": "France", "population": 2_100_000}
    h.read(lambda: h.sim.next_reply(Reply.from_text(json.dumps(answer))))
    structured = chat(h).with_structured_output(City)
    city = structured.invoke("Tell me about Paris.")
    assert city == City(**answer)
    (sent,) = ollama_requests(h)
    schema = sent["format"]
    assert schema["type"] == "object"
    assert set(schema["properties"]) == {"name", "country", "population"}
    assert "tools" not in sent


def test_structured_output_function_calling(h: Harness) -> None:
    """``method="function_calling"``: one tool named after the model, forced by name
    (``tool_choice`` naming the function); the call's arguments are the answer."""
    structured = chat(h).with_structured_output(City, method="function_calling", include_raw=True)
    result = structured.invoke("Tell me about Paris.")
    assert result["parsing_error"] is None, result
    raw = result["raw"]
    assert isinstance(raw, AIMessage)
    assert [call["name"] for call in raw.tool_calls] == ["City"], raw
    city = result["parsed"]
    assert isinstance(city, City)
    assert isinstance(city.name, str) and isinstance(city.population, int)


def test_bind_tools_tool_choice_any(h: Harness) -> None:
    """``tool_choice="any"`` is sent as "required": the reply must be a call to the tool."""
    model = chat(h).bind_tools([get_weather], tool_choice="any")
    message = model.invoke("What is the weather in Paris?")
    assert isinstance(message, AIMessage)
    assert len(message.tool_calls) >= 1, message
    call = message.tool_calls[0]
    assert call["name"] == "get_weather"
    assert isinstance(call["args"].get("city"), str), call
    assert call["id"]
    assert message.response_metadata["finish_reason"] == "tool_calls"
    # The tool runs on what the model sent.
    assert get_weather.invoke(call["args"]).startswith("sunny in ")
