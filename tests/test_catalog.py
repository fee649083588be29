"""The model allow-list: Ollama's installed models by default, or the configured list."""

from __future__ import annotations

import dataclasses

import openai
import pytest
from harness import Harness, ask

from clawproxy.ollama import catalog
from clawproxy.ollama.catalog import canonical
from clawproxy.simulator import DEFAULT_MODELS
from clawproxy.simulator.catalog import ModelRegistry


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("llama3.2", "llama3.2:latest"),
        ("Llama3.2:Latest", "llama3.2:latest"),
        ("qwen3:32b", "qwen3:32b"),
        ("user/model", "user/model:latest"),
        ("user/model:q4", "user/model:q4"),
    ],
)
def test_canonical_names(name: str, expected: str) -> None:
    assert canonical(name) == expected


def chat_requests(h: Harness) -> int:
    return len([r for r in h.sim.requests if r.path == "/api/chat"])


def tags_requests(h: Harness) -> int:
    return len([r for r in h.sim.requests if r.path == "/api/tags"])


def test_unknown_model_never_reaches_a_generation(gw: Harness) -> None:
    with pytest.raises(openai.NotFoundError):
        ask(gw, model="nosuch")
    assert chat_requests(gw) == 0
    # Names match as Ollama matches them.
    assert ask(gw, model="LLAMA3.2").choices[0].message.content
    assert chat_requests(gw) == 1


def test_installed_models_are_cached(gw: Harness) -> None:
    for _ in range(5):
        ask(gw)
    assert tags_requests(gw) == 1


def test_a_model_pulled_later_is_found(gw: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog, "MISS_REFRESH_S", 0.0)
    ask(gw)
    new = dataclasses.replace(DEFAULT_MODELS[1], name="fresh:latest")
    registry = ModelRegistry([*gw.sim.registry.models, new])
    gw.read(lambda: setattr(gw.sim, "registry", registry))
    assert ask(gw, model="fresh").choices[0].message.content
    assert tags_requests(gw) == 2


def test_configured_list_is_the_whole_truth() -> None:
    with Harness({"model.allowed": ["qwen3:32b"]}) as h:
        with pytest.raises(openai.NotFoundError):
            ask(h, model="llama3.2:latest")
        assert ask(h).choices[0].message.content
        assert tags_requests(h) == 0
