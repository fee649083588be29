"""POST /v1/completions: the official client, the gateway, the simulator's /api/generate."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from harness import Harness, client, error_of, post_json

from clawproxy.simulator import Fault, Reply

MODEL = "qwen3:32b"
PATH = "/v1/completions"


def complete(h: Harness, **kwargs: Any) -> Any:
    params: dict[str, Any] = {"model": MODEL, "prompt": "def add(a, b):"}
    params.update(kwargs)
    return client(h).completions.create(**params)


def test_whole_reply_text_and_usage(gw: Harness) -> None:
    gw.sim.next_reply(
        Reply(tokens=["\n    ", "return", ' a + b  "é"'], prompt_eval_count=7, eval_count=3)
    )
    reply = complete(gw)
    assert reply.object == "text_completion" and reply.id.startswith("cmpl-")
    assert reply.model == MODEL
    [choice] = reply.choices
    assert choice.text == '\n    return a + b  "é"'
    assert (choice.index, choice.finish_reason, choice.logprobs) == (0, "stop", None)
    assert reply.usage is not None
    usage = (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens)
    assert usage == (7, 3, 10)
    sent = gw.sim.requests[-1]
    assert sent.path == "/api/generate"
    assert sent.json["prompt"] == "def add(a, b):" and sent.json["stream"] is True
    assert sent.json["options"]["num_ctx"] == 4096


def test_stream_text_final_chunk_and_usage(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=["one", " two", " three"], prompt_eval_count=4, eval_count=3))
    chunks = list(complete(gw, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == "one two three"
    assert all(c.object == "text_completion" for c in chunks)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == "stop" and set(reasons[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 7


def test_stream_raw_ends_with_done(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=["x"]))
    status, _, body = post_json(gw, PATH, {"model": MODEL, "prompt": ["p"], "stream": True})
    assert status == 200
    events = [e for e in body.decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["choices"][0]["text"] == "x"


def test_suffix_max_tokens_stop_seed_reach_ollama(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=["a", "b"], done_reason="length"))
    reply = complete(gw, suffix="\nprint(1)", max_tokens=2, stop=["\n\n"], seed=3, temperature=0)
    assert reply.choices[0].finish_reason == "length"
    sent = gw.sim.requests[-1].json
    assert sent["suffix"] == "\nprint(1)"
    options = sent["options"]
    assert (options["num_predict"], options["stop"], options["seed"]) == (2, ["\n\n"], 3)
    assert options["temperature"] == 0.0


def test_stream_length_finish_reason(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=["a"], done_reason="length"))
    chunks = list(complete(gw, stream=True, max_tokens=1))
    assert chunks[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"best_of": 3}, "best_of"),
        ({"echo": True}, "echo"),
        ({"logprobs": 2}, "logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": [1, 2]}, "prompt"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"suffix": 3}, "suffix"),
    ],
)
def test_refusals_name_the_param(gw: Harness, extra: dict[str, Any], param: str) -> None:
    before = len(gw.sim.requests)
    with pytest.raises(openai.BadRequestError) as info:
        complete(gw, **extra)
    assert info.value.status_code == 400
    body: Any = info.value.body
    assert body["param"] == param
    # Refused before anything reached Ollama.
    assert all(r.path != "/api/generate" for r in list(gw.sim.requests)[before:])


def test_refusal_says_ollama_cannot(gw: Harness) -> None:
    status, _, body = post_json(gw, PATH, {"model": MODEL, "prompt": "x", "echo": True})
    assert status == 400
    assert "Ollama" in error_of(body)["message"]


def test_unknown_model_is_404(gw: Harness) -> None:
    with pytest.raises(openai.NotFoundError):
        complete(gw, model="nope:1b")


@pytest.mark.parametrize(
    "fault",
    [Fault(error_line_after=2), Fault(eof_no_done=True), Fault(reset_after=2)],
    ids=["error_line", "eof_no_done", "reset"],
)
def test_failure_mid_stream_is_an_error_event_without_done(gw: Harness, fault: Fault) -> None:
    gw.sim.next_reply(Reply(tokens=["a", "b", "c", "d"], fault=fault))
    received: list[Any] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in complete(gw, stream=True):
            received.append(chunk)
    assert not isinstance(info.value, openai.APIConnectionError)
    assert "abcd".startswith("".join(c.choices[0].text for c in received))
    assert all(c.choices[0].finish_reason is None for c in received)
    if fault.error_line_after:
        assert "error was encountered while running the model" in info.value.message
    assert sum(gw.read(lambda: dict(gw.gateway.state.upstream_errors)).values()) == 1
