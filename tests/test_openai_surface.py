"""The OpenAI surface beyond chat: ``/v1/models/{id}``, ``x-request-id`` and a tool-call
message's ``content: null``, seen by the official client and by raw HTTP.

- ``GET /v1/models/{id}`` answers the list's own object for ids with ``:`` and ``/`` (the
  client sends ``/`` as ``%2F``), 404 ``model_not_found`` otherwise, and no spelling of
  ``..`` or percent-encoding in an id reaches another route; keys, Origin and CORS apply.
- Every public response carries ``x-request-id``: the client's own when sane, else
  ``req_`` and 24 hex digits; the access line ends with the same id.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator

import openai
import pytest
from harness import HELLO, Harness, ask, client, error_of, raw

from clawproxy.simulator import DEFAULT_MODELS, ModelInfo, Reply, tool_call

APP = "https://app.example:8443"
KEY = "sk-surface-0123456789"
HF = "hf.co/org/model:Q4"
LIBRARY = "library/foo:latest"
EXTRA_MODELS = [
    ModelInfo(
        name=name,
        family="llama",
        parameter_size="1B",
        quantization_level="Q4_K_M",
        size=1,
        parameter_count=1,
        context_length=4096,
    )
    for name in (HF, LIBRARY)
]
GENERATED_ID = re.compile(r"req_[0-9a-f]{24}")


@pytest.fixture(scope="module")
def h() -> Iterator[Harness]:
    options = {"models": [*DEFAULT_MODELS, *EXTRA_MODELS]}
    with Harness({"gpu.enabled": False}, sim_options=options) as harness:
        yield harness
        harness.close_clients()
        assert harness.settled()


def chats(h: Harness) -> int:
    return len([r for r in h.sim.requests if r.path == "/api/chat"])


# --- GET /v1/models/{id} -------------------------------------------------------------------


def test_retrieve_answers_the_lists_own_object(h: Harness) -> None:
    listed = {m.id: m for m in client(h).models.list()}
    assert {HF, LIBRARY, "qwen3:32b"} <= set(listed)
    for name in ("qwen3:32b", HF, LIBRARY):
        model = client(h).models.retrieve(name)
        assert model == listed[name]
    assert client(h).models.retrieve(HF).owned_by == "hf.co"


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/v1/models/hf.co/org/model:Q4", HF),  # unencoded '/' (curl)
        ("/v1/models/hf.co%2Forg%2Fmodel%3AQ4", HF),  # everything encoded
        ("/v1/models/QWEN3:32B", "qwen3:32b"),  # Ollama's matching: case-insensitive
        ("/v1/models/library/foo", LIBRARY),  # and ':latest' implied
        ("/v1/models/qwen3:32b?x=1", "qwen3:32b"),  # the query string is never read
    ],
)
def test_ids_as_raw_http_sends_them(h: Harness, path: str, name: str) -> None:
    status, headers, body = raw(h, "GET", path)
    assert status == 200, body
    assert json.loads(body)["id"] == name
    assert headers["content-type"] == "application/json"


def test_an_unknown_model_is_openais_not_found(h: Harness) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(h).models.retrieve("nope:1b")
    err = caught.value.body
    assert isinstance(err, dict)
    assert (err["code"], err["param"]) == ("model_not_found", "model")
    assert "nope:1b" in err["message"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/../chat/completions",
        "/v1/models/..%2Fchat%2Fcompletions",
        "/v1/models/%2e%2e/chat/completions",
        "/v1/models/x/../../chat/completions",
        "/v1/models/qwen3:32b%00",
        "/v1/models/qwen3:32b%0d%0aX-Forged:%201",
        "/v1/models/qwen3%20:32b",
        "/v1/models/%2Fqwen3:32b",
        "/v1/models/qwen3:32b%2F",
        "/v1/models/%C3%A9",
        "/v1/models/%ZZ",
        "/v1/models/" + "a" * 600,
    ],
)
def test_hostile_ids_are_unknown_models_and_reach_no_other_route(h: Harness, path: str) -> None:
    before = chats(h)
    status, headers, body = raw(h, "GET", path)
    assert status == 404, body
    err = error_of(body)
    assert (err["code"], err["param"]) == ("model_not_found", "model")
    assert "x-forged" not in headers
    assert "\\u0000" not in err["message"] and "\r" not in err["message"]
    assert chats(h) == before


def test_the_prefix_alone_and_other_methods(h: Harness) -> None:
    status, _, body = raw(h, "GET", "/v1/models/")
    assert status == 404 and error_of(body)["code"] == "not_found"
    status, headers, body = raw(
        h, "POST", "/v1/models/qwen3:32b", {"Content-Type": "application/json"}, b"{}"
    )
    assert status == 405 and headers["allow"] == "GET"
    status, headers, body = raw(h, "HEAD", "/v1/models/qwen3:32b")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


def test_retrieve_uses_the_catalogs_cached_list(h: Harness) -> None:
    client(h).models.list()
    before = len([r for r in h.sim.requests if r.path == "/api/tags"])
    for _ in range(5):
        client(h).models.retrieve("qwen3:32b")
    assert len([r for r in h.sim.requests if r.path == "/api/tags"]) == before


def test_keys_origin_and_cors_apply_to_retrieve() -> None:
    with Harness(
        {"gpu.enabled": False, "auth.api_keys": [KEY], "server.cors.allow_origins": [APP]}
    ) as k:
        path = "/v1/models/qwen3:32b"
        status, _, body = raw(k, "GET", path)
        assert status == 401, body
        auth = {"Authorization": f"Bearer {KEY}"}
        assert raw(k, "GET", path, auth)[0] == 200
        status, _, body = raw(k, "GET", path, {**auth, "Origin": "http://evil.example"})
        assert status == 403 and error_of(body)["code"] == "origin_not_allowed"
        status, headers, _ = raw(k, "GET", path, {**auth, "Origin": APP})
        assert status == 200 and headers["access-control-allow-origin"] == APP
        preflight = {"Origin": APP, "Access-Control-Request-Method": "GET"}
        status, headers, _ = raw(k, "OPTIONS", path, preflight)
        assert status == 204
        assert "GET" in headers["access-control-allow-methods"]
        assert k.settled()


# --- x-request-id --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "offered",
    ["abc", "0f8c1e2a-7d4b-4c1a-9e7f-3b2a1c0d9e8f", "svc:1.2-x_y", "a" * 128],
)
def test_a_sane_client_request_id_is_kept(h: Harness, offered: str) -> None:
    for path in ("/health", "/v1/models", "/v1/models/nope", "/nowhere"):
        assert raw(h, "GET", path, {"X-Request-Id": offered})[1]["x-request-id"] == offered


@pytest.mark.parametrize("offered", ["", "a" * 129, "a b", "a/b", "é", "x;y", "<script>"])
def test_an_insane_one_is_replaced(h: Harness, offered: str) -> None:
    _, headers, _ = raw(h, "GET", "/health", {"X-Request-Id": offered})
    assert GENERATED_ID.fullmatch(headers["x-request-id"]), headers


def test_every_public_response_has_one_and_each_its_own(h: Harness) -> None:
    seen = set()
    for method, path, headers, body in [
        ("GET", "/health", {}, b""),
        ("GET", "/v1/models", {}, b""),
        ("GET", "/v1/models/qwen3:32b", {}, b""),
        ("GET", "/api/tags", {}, b""),  # 404
        ("DELETE", "/v1/models", {}, b""),  # 405
        ("GET", "/v1/models", {"Origin": "http://evil.example"}, b""),  # 403
        ("POST", "/v1/chat/completions", {"Content-Type": "text/plain"}, b"{}"),  # 415
    ]:
        _, got, _ = raw(h, method, path, headers, body)
        rid = got["x-request-id"]
        assert GENERATED_ID.fullmatch(rid), (path, got)
        seen.add(rid)
    assert len(seen) == 7


def test_streams_and_the_client_see_the_id_and_the_access_line_ends_with_it(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    h.sim.next_reply(Reply(tokens=["a", "b"]))
    resp = client(h).chat.completions.with_raw_response.create(
        model="qwen3:32b",
        messages=HELLO["messages"],
        stream=True,
        extra_headers={"X-Request-Id": "trace-42"},
    )
    assert resp.headers["x-request-id"] == "trace-42"
    assert len(list(resp.parse())) >= 2
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [r.getMessage() for r in caplog.records if r.name == "clawproxy.access"]
        if any("rid=trace-42" in line for line in lines):
            break
        time.sleep(0.01)
    (line,) = [line for line in lines if "rid=trace-42" in line]
    assert '"POST /v1/chat/completions" 200 ' in line
    assert line.endswith(" key=- node=default rid=trace-42")


# --- content: null -------------------------------------------------------------------------

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]


def test_a_tool_call_alone_has_null_content(h: Harness) -> None:
    h.sim.next_reply(Reply(tool_calls=[tool_call("get_weather", {"city": "Oslo"})]))
    reply = ask(h, tools=TOOLS)
    message = reply.choices[0].message
    assert message.content is None and message.tool_calls[0].function.name == "get_weather"
    h.sim.next_reply(Reply(tool_calls=[tool_call("get_weather", {"city": "Oslo"})]))
    status, _, body = raw(
        h,
        "POST",
        "/v1/chat/completions",
        {"Content-Type": "application/json"},
        json.dumps({"model": "qwen3:32b", **HELLO, "tools": TOOLS}).encode(),
    )
    assert status == 200
    assert json.loads(body)["choices"][0]["message"]["content"] is None


def test_text_with_a_tool_call_keeps_its_text_and_no_text_no_call_is_empty(h: Harness) -> None:
    h.sim.next_reply(Reply(tokens=["Let me check."], tool_calls=[tool_call("get_weather", {})]))
    assert ask(h, tools=TOOLS).choices[0].message.content == "Let me check."
    h.sim.next_reply(Reply(tokens=[]))
    assert ask(h).choices[0].message.content == ""


def test_retrieve_is_counted_under_one_endpoint_label(h: Harness) -> None:
    """Metric labels stay bounded: every id is counted as ``/v1/models/{id}``."""
    for model in ("qwen3:32b", "nope:1b"):
        raw(h, "GET", f"/v1/models/{model}")
    labels = h.read(lambda: {endpoint for endpoint, _, _ in h.gateway.state.requests})
    assert "/v1/models/{id}" in labels
    assert not any("qwen3" in label or "nope" in label for label in labels)
