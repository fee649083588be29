"""POST /v1/embeddings: the official client through the gateway to the simulator's /api/embed."""

from __future__ import annotations

import array
import base64
import json
import struct
from typing import Any, cast

import openai
import orjson
import pytest
from harness import Harness, client, error_of, open_stream, post_json
from hypothesis import given
from hypothesis import strategies as st

from clawproxy.errors import UpstreamFailed
from clawproxy.openai.embeddings import EmbeddingsPlan, render_embeddings
from clawproxy.simulator import DEFAULT_MODELS, ModelInfo
from clawproxy.simulator.embed import embedding_vector, prompt_tokens

QWEN = DEFAULT_MODELS[0]
NOMIC = ModelInfo(
    name="nomic-embed-text:latest",
    family="nomic-bert",
    parameter_size="137M",
    quantization_level="F16",
    size=274_302_450,
    parameter_count=136_727_040,
    context_length=2048,
    capabilities=("embedding",),
)
PATH = "/v1/embeddings"


def expected(model: ModelInfo, text: str, dimensions: int | None = None) -> list[float]:
    return embedding_vector(model, text, dimensions)


def embed(h: Harness, **kwargs: Any) -> Any:
    params: dict[str, Any] = {"model": QWEN.name, "input": "hello"}
    params.update(kwargs)
    return client(h).embeddings.create(**params)


# --- through the gateway with the official client ---------------------------------------


def test_default_base64_round_trips_exactly(gw: Harness) -> None:
    reply = embed(gw)
    assert reply.object == "list" and reply.model == QWEN.name
    [item] = reply.data
    assert (item.object, item.index) == ("embedding", 0)
    assert item.embedding == expected(QWEN, "hello")
    assert len(item.embedding) == 4096
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == prompt_tokens("hello")
    sent = gw.sim.requests[-1]
    assert sent.path == "/api/embed"
    assert sent.json == {"model": QWEN.name, "input": ["hello"], "options": {"num_ctx": 4096}}


def test_float_format_gives_the_same_values(gw: Harness) -> None:
    reply = embed(gw, input="hello", encoding_format="float")
    assert reply.data[0].embedding == expected(QWEN, "hello")
    # On the wire too: numbers when asked for floats, a base64 string when asked for base64.
    status, _, body = post_json(gw, PATH, {"model": QWEN.name, "input": "x", "user": "u1"})
    assert status == 200
    values = json.loads(body)["data"][0]["embedding"]
    assert values == expected(QWEN, "x")
    status, _, body = post_json(
        gw, PATH, {"model": QWEN.name, "input": "x", "encoding_format": "base64"}
    )
    raw = base64.b64decode(json.loads(body)["data"][0]["embedding"])
    assert struct.unpack(f"<{len(raw) // 4}f", raw) == tuple(values)


def test_list_input_keeps_order_and_indexes(gw: Harness) -> None:
    texts = ["first", "second <b>&</b>", "漢字 🦀", "first"]
    reply = embed(gw, input=texts, dimensions=16)
    assert [d.index for d in reply.data] == [0, 1, 2, 3]
    assert [d.embedding for d in reply.data] == [expected(QWEN, t, 16) for t in texts]
    assert reply.data[0].embedding == reply.data[3].embedding
    assert reply.usage.prompt_tokens == sum(prompt_tokens(t) for t in texts)
    assert gw.sim.requests[-1].json["input"] == texts


def test_dimensions_are_passed_through(gw: Harness) -> None:
    reply = embed(gw, dimensions=8, encoding_format="float")
    assert reply.data[0].embedding == expected(QWEN, "hello", 8)
    assert sum(v * v for v in reply.data[0].embedding) == pytest.approx(1.0, abs=1e-6)
    assert gw.sim.requests[-1].json["dimensions"] == 8


def test_an_embedding_model_has_its_own_width() -> None:
    with Harness(sim_options={"models": [*DEFAULT_MODELS, NOMIC]}) as h:
        reply = embed(h, model="nomic-embed-text", input=["a", "b"])
        assert [d.embedding for d in reply.data] == [expected(NOMIC, "a"), expected(NOMIC, "b")]
        assert len(reply.data[0].embedding) == 768
        assert h.sim.requests[-1].json["model"] == "nomic-embed-text"


BAD_REQUESTS: list[tuple[dict[str, Any], str, str]] = [
    ({"input": [1, 2, 3]}, "input", "token arrays"),
    ({"input": [[1, 2], [3]]}, "input", "token arrays"),
    ({"input": 7}, "input", "token arrays"),
    ({"input": []}, "input", "empty"),
    ({"input": ""}, "input", "empty"),
    ({"input": None}, "input", "required"),
    ({"input": {"text": "a"}}, "input", "string"),
    ({"input": ["a", 3]}, "input[1]", "string"),
    ({"input": ["a", None]}, "input[1]", "string"),
    ({"input": ["a", ""]}, "input[1]", "empty"),
    ({"input": ["a"] * 3}, "input", "at most 2"),
    ({"encoding_format": "hex"}, "encoding_format", "float, base64"),
    ({"encoding_format": 1}, "encoding_format", "float, base64"),
    ({"dimensions": 0}, "dimensions", "integer"),
    ({"dimensions": -3}, "dimensions", "integer"),
    ({"dimensions": "8"}, "dimensions", "integer"),
    ({"dimensions": 8.0}, "dimensions", "integer"),
    ({"dimensions": True}, "dimensions", "integer"),
    ({"model": "evil.host/x:1"}, "model", "registry"),
]


def test_bad_requests_are_400s_naming_the_field() -> None:
    with Harness({"server.max_embedding_inputs": 2}) as h:
        before = len(h.sim.requests)
        for fields, param, words in BAD_REQUESTS:
            body = {"model": QWEN.name, "input": "a", **fields}
            status, _, raw = post_json(h, PATH, body)
            err = error_of(raw)
            assert (status, err["param"], err["type"]) == (400, param, "invalid_request_error")
            assert words in err["message"], (fields, err)
        status, _, raw = post_json(h, PATH, b"[1, 2]")
        assert status == 400
        status, _, raw = post_json(h, PATH, b"{not json")
        assert (status, error_of(raw)["code"]) == (400, "invalid_json")
        # Two inputs are within the limit; none of the above reached Ollama.
        status, _, _ = post_json(h, PATH, {"model": QWEN.name, "input": ["a", "b"]})
        assert status == 200
        assert [r.path for r in list(h.sim.requests)[before:]] == ["/api/tags", "/api/embed"]


def test_the_official_client_sees_a_400(gw: Harness) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        embed(gw, input=[[1, 2, 3]])
    assert cast(dict[str, Any], caught.value.body)["param"] == "input"


def test_unknown_model_is_404(gw: Harness) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        embed(gw, model="no-such-model")
    assert cast(dict[str, Any], caught.value.body)["code"] == "model_not_found"
    assert all(r.path != "/api/embed" for r in gw.sim.requests)


def test_embeddings_take_an_admission_slot() -> None:
    settings = {"gateway.max_concurrent": 1, "gateway.queue_size": 0}
    with Harness(settings, sim_options={"token_rate": 5.0}) as h:
        adm = h.gateway.state.admission
        sock = open_stream(h)
        try:
            assert h.call(lambda: h.wait_until(lambda: adm.active == 1))
            status, headers, raw = post_json(h, PATH, {"model": QWEN.name, "input": "a"})
            assert (status, error_of(raw)["code"]) == (503, "queue_full")
            assert headers["retry-after"] == "1"
            assert not any(r.path == "/api/embed" for r in h.sim.requests)
        finally:
            sock.close()
        assert h.settled()
        status, _, _ = post_json(h, PATH, {"model": QWEN.name, "input": "a"})
        assert status == 200


def test_counted_in_metrics_and_logged_without_the_input(
    gw: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "the secret input text"
    embed(gw, input=[secret, secret + "2"])
    counts = gw.read(lambda: dict(gw.gateway.state.requests))
    assert counts[("/v1/embeddings", QWEN.name, 200)] == 1
    access = [r.getMessage() for r in caplog.records if r.name == "clawproxy.access"]
    assert any('"POST /v1/embeddings" 200 model=qwen3:32b' in line for line in access), access
    assert not any(secret in r.getMessage() for r in caplog.records)


def test_ollama_gone_is_a_counted_502() -> None:
    with Harness() as h:
        assert embed(h).data  # the model check's list is cached from now on
        h.call(h.sim.close)
        status, headers, raw = post_json(h, PATH, {"model": QWEN.name, "input": "a"})
        assert (status, error_of(raw)["code"]) == (502, "upstream_unavailable")
        assert headers["x-should-retry"] == "false"
        errors = h.read(lambda: dict(h.gateway.state.upstream_errors))
        assert errors == {"upstream_unavailable": 1}
        assert h.settled()


# --- the simulator's /api/embed, asked directly ---------------------------------------------


def sim_post(h: Harness, body: object) -> tuple[int, Any]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", h.sim.port, timeout=10)
    try:
        conn.request("POST", "/api/embed", body=json.dumps(body))
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_simulator_embed_is_ollamas_shape() -> None:
    with Harness(sim_options={"models": [*DEFAULT_MODELS, NOMIC]}) as h:
        status, reply = sim_post(h, {"model": "nomic-embed-text", "input": "hi"})
        assert status == 200
        assert list(reply) == [
            "model",
            "embeddings",
            "total_duration",
            "load_duration",
            "prompt_eval_count",
        ]
        assert reply["model"] == "nomic-embed-text"
        [vector] = reply["embeddings"]
        # Written as Go writes float32s: each number reads back as the same float32.
        assert array.array("f", vector).tolist() == expected(NOMIC, "hi")
        status, reply = sim_post(
            h, {"model": "nomic-embed-text", "input": ["a", "b"], "dimensions": 4}
        )
        assert [len(v) for v in reply["embeddings"]] == [4, 4]
        status, reply = sim_post(h, {"model": "nomic-embed-text", "input": []})
        assert (status, reply["embeddings"]) == (200, [])
        assert sim_post(h, {"model": "nope", "input": "a"}) == (
            404,
            {"error": "model 'nope' not found"},
        )
        assert sim_post(h, {"model": "nomic-embed-text", "input": [1]}) == (
            400,
            {"error": "invalid input type"},
        )
        assert sim_post(h, {"model": "nomic-embed-text", "input": "a", "dimensions": -1})[0] == 400
        long_text = "word " * 4000
        body = {"model": "nomic-embed-text", "input": long_text, "truncate": False}
        assert sim_post(h, body)[0] == 400
        assert sim_post(h, {**body, "truncate": True})[0] == 200


# --- rendering, property-tested ----------------------------------------------------------------

FLOATS = st.floats(allow_nan=False, allow_infinity=False, width=32) | st.floats(
    min_value=-3e38, max_value=3e38, allow_nan=False
)


@given(st.lists(st.lists(FLOATS, min_size=1, max_size=40), min_size=1, max_size=5))
def test_base64_decodes_to_the_float32_of_each_value(vectors: list[list[float]]) -> None:
    reply = orjson.dumps({"embeddings": vectors, "prompt_eval_count": 3})
    float32s = [[struct.unpack("<f", struct.pack("<f", v))[0] for v in vec] for vec in vectors]
    b64, tokens = render_embeddings(EmbeddingsPlan("m", len(vectors), True, {}), reply)
    floats, _ = render_embeddings(EmbeddingsPlan("m", len(vectors), False, {}), reply)
    assert tokens == 3
    decoded = [
        list(struct.unpack(f"<{len(vec)}f", base64.b64decode(item["embedding"])))
        for vec, item in zip(vectors, orjson.loads(b64)["data"], strict=True)
    ]
    assert decoded == float32s
    assert [item["embedding"] for item in orjson.loads(floats)["data"]] == float32s


@pytest.mark.parametrize(
    "reply",
    [
        b"not json",
        b"[]",
        b'{"embeddings":[[0.5],[0.25]]}',
        b'{"embeddings":[[0.5]],"prompt_eval_count":"3"}',
        b'{"embeddings":[["a"]]}',
        b'{"embeddings":[[]]}',
        b'{"embeddings":[{"a":1}]}',
        b'{"embeddings":[[1e39]]}',
        b'{"model":"m"}',
    ],
)
def test_a_reply_of_another_shape_is_a_502(reply: bytes) -> None:
    with pytest.raises(UpstreamFailed) as caught:
        render_embeddings(EmbeddingsPlan("m", 1, False, {}), reply)
    assert caught.value.status == 502
