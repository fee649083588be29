"""``openai.reasoning_field``: the model's thinking under reasoning_content, reasoning, or
both, through every path of the re-framer (one line per read, several, split anywhere,
the general parser) and the non-streaming accumulator, and end to end with the client."""

from __future__ import annotations

import json
from typing import Any

import pytest
from harness import Harness, ask, client
from hypothesis import given, settings
from hypothesis import strategies as st
from sse_helpers import CID, CREATED, MODEL, NASTY, chat_line, cut, deltas, done_line, parse_sse

from clawproxy.config import ConfigError, config_from_mapping
from clawproxy.openai.aggregate import ChatAccumulator
from clawproxy.openai.reframe import SseReframer
from clawproxy.simulator import Reply

FIELDS = {
    "reasoning_content": ("reasoning_content",),
    "reasoning": ("reasoning",),
    "both": ("reasoning_content", "reasoning"),
}
THOUGHTS = ["Let me ", "think ", *NASTY]
STREAM = b"".join(chat_line(thinking=t) for t in THOUGHTS) + chat_line("Answer") + done_line()


def reframe(field: str, reads: list[bytes]) -> list[Any]:
    r = SseReframer(
        completion_id=CID, created=CREATED, model=MODEL, include_usage=False, reasoning_field=field
    )
    return parse_sse(b"".join(r.feed(read) for read in reads) + r.eof())


def reasoning_of(events: list[Any], key: str) -> str:
    return "".join(d.get(key, "") for d in deltas(events))


@pytest.mark.parametrize("field", FIELDS)
def test_each_field_in_one_read_and_line_by_line(field: str) -> None:
    per_line = STREAM.splitlines(keepends=True)
    for reads in ([STREAM], per_line):
        events = reframe(field, reads)
        for key in FIELDS[field]:
            assert reasoning_of(events, key) == "".join(THOUGHTS)
        for key in {"reasoning_content", "reasoning"} - set(FIELDS[field]):
            assert reasoning_of(events, key) == ""
        assert reasoning_of(events, "content") == "Answer"


@settings(max_examples=60, deadline=None)
@given(points=st.lists(st.integers(0, 10**6), max_size=8), field=st.sampled_from(list(FIELDS)))
def test_any_split_gives_the_same_reasoning(points: list[int], field: str) -> None:
    events = reframe(field, cut(STREAM, points))
    for key in FIELDS[field]:
        assert reasoning_of(events, key) == "".join(THOUGHTS)


@pytest.mark.parametrize("field", FIELDS)
def test_the_whole_reply_carries_the_same_names(field: str) -> None:
    acc = ChatAccumulator(completion_id=CID, created=CREATED, model=MODEL, reasoning_field=field)
    acc.feed(STREAM)
    message = json.loads(acc.result())["choices"][0]["message"]
    for key in FIELDS[field]:
        assert message[key] == "".join(THOUGHTS)
    assert set(message) - {"role", "content"} == set(FIELDS[field])


def test_end_to_end_with_both() -> None:
    with Harness({"openai.reasoning_field": "both"}) as h:
        h.sim.next_reply(Reply(thinking=["Let me ", "think"], tokens=["Answer"]))
        chunks = list(
            client(h).chat.completions.create(
                model="qwen3:32b", stream=True, messages=[{"role": "user", "content": "hi"}]
            )
        )
        extras = [c.choices[0].delta.model_extra or {} for c in chunks if c.choices]
        for key in ("reasoning_content", "reasoning"):
            assert "".join(e.get(key) or "" for e in extras) == "Let me think"
        h.sim.next_reply(Reply(thinking=["Hm"], tokens=["Yes"]))
        message = ask(h).choices[0].message
        assert (message.model_extra or {}).get("reasoning") == "Hm"


def test_an_unknown_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^openai\.reasoning_field: expected one of"):
        config_from_mapping({"openai": {"reasoning_field": "thoughts"}})
