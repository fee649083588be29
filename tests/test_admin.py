"""The admin port: its endpoints, its access checks, hot model load/unload, and the public
port not serving any of it."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from harness import CALL_TIMEOUT, Harness, post_json, request

from clawproxy.app.services import gateway_status
from clawproxy.policy.adminaccess import allowed_hosts, host_of, origin_host
from clawproxy.simulator import Reply

ADMIN_PATHS = ["/metrics", "/stats", "/v1/model/load", "/v1/model/unload"]
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def gw(loop_kind: str) -> Iterator[Harness]:
    with Harness({"gpu.enabled": False}, loop_kind=loop_kind) as harness:
        yield harness
        assert harness.settled(), "a request was left active or queued"


def admin(
    h: Harness,
    method: str,
    path: str,
    body: object = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", h.gateway.admin_port, timeout=CALL_TIMEOUT)
    try:
        data = None if body is None else body if isinstance(body, bytes) else json.dumps(body)
        conn.request(method, path, body=data, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def admin_json(
    h: Harness, method: str, path: str, body: object = None
) -> tuple[int, dict[str, Any]]:
    status, _, data = admin(h, method, path, body)
    return status, json.loads(data)


# --- endpoints -------------------------------------------------------------------------------


def test_health_reports_state_and_upstream(gw: Harness) -> None:
    status, body = admin_json(gw, "GET", "/health")
    assert status == 200
    assert body["status"] == "ok"
    assert body["model"] == "qwen3:32b"
    assert body["upstream"]["reachable"] is True
    assert body["upstream"]["version"] == "0.33.0"
    assert (body["active"], body["queued"]) == (0, 0)
    assert body["uptime_seconds"] >= 0
    assert any(r.path == "/api/version" for r in gw.sim.requests)


def test_health_says_degraded_when_ollama_is_down(loop_kind: str) -> None:
    with Harness({"gpu.enabled": False}, loop_kind=loop_kind, start_simulator=False) as h:
        status, body = admin_json(h, "GET", "/health")
    assert status == 503
    assert body["status"] == "degraded"
    assert body["upstream"]["reachable"] is False
    assert "cannot connect" in body["upstream"]["error"]


def test_one_status_everywhere_when_ollama_is_down(loop_kind: str) -> None:
    """admin /health, admin /stats and the UI's snapshot give one status, from one rule."""
    with Harness({"gpu.enabled": False}, loop_kind=loop_kind, start_simulator=False) as h:
        stats_status, stats = admin_json(h, "GET", "/stats")
        ui_status, _, ui_body = request(h, "GET", "/ui/api/stats")
        health_status, health = admin_json(h, "GET", "/health")
    assert (stats_status, ui_status, health_status) == (200, 200, 503)
    ui_stats = json.loads(ui_body)
    assert stats["status"] == ui_stats["status"] == health["status"] == "degraded"
    assert stats["upstream"]["reachable"] is False
    assert ui_stats["upstream"]["reachable"] is False


def test_stats_share_the_health_checks_answer(gw: Harness) -> None:
    def version_calls() -> int:
        return sum(1 for r in gw.sim.requests if r.path == "/api/version")

    assert admin_json(gw, "GET", "/health")[1]["status"] == "ok"
    assert version_calls() == 1
    _, stats = admin_json(gw, "GET", "/stats")
    _, _, ui_body = request(gw, "GET", "/ui/api/stats")
    assert stats["status"] == json.loads(ui_body)["status"] == "ok"
    assert stats["upstream"]["version"] == "0.33.0"
    # One answer from Ollama, shared: /stats and the UI did not ask again.
    assert version_calls() == 1
    # The health check always asks afresh (a monitor wants the present).
    admin_json(gw, "GET", "/health")
    assert version_calls() == 2


@pytest.mark.parametrize(
    ("draining", "reachable", "expected"),
    [(False, True, "ok"), (False, False, "degraded"), (True, True, "draining"),
     (True, False, "draining")],
)  # fmt: skip
def test_gateway_status_rule(draining: bool, reachable: bool, expected: str) -> None:
    assert gateway_status(draining, {"reachable": reachable}) == expected


def test_stats_snapshot(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=["a", "b", "c"]))
    assert post_json(gw, "/v1/chat/completions", CHAT)[0] == 200
    assert post_json(gw, "/v1/chat/completions", b"{")[0] == 400
    status, stats = admin_json(gw, "GET", "/stats")
    assert status == 200
    assert stats["status"] == "ok"
    # The newest request first; no prompt text, no client address anywhere.
    recent = stats["recent"]
    assert [r["status"] for r in recent] == [400, 200]
    assert recent[1]["tokens"] == 3
    assert recent[1]["model"] == "qwen3:32b"
    assert recent[1]["ttft_ms"] is not None
    assert set(recent[1]) == {
        "time", "endpoint", "status", "model", "ttft_ms", "duration_ms", "tokens", "outcome",
    }  # fmt: skip
    text = json.dumps(stats)
    assert "127.0.0.1" not in text
    assert '"hi"' not in text
    minute = stats["windows"][0]
    assert (minute["window_seconds"], minute["requests"], minute["tokens"]) == (60, 2, 3)
    assert minute["duration_ms"]["p50"] is not None
    assert sum(stats["requests_per_second_series"]) == 2
    details = stats["model_details"]
    assert details["name"] == "qwen3:32b"
    assert details["context_length"] == 40960
    assert "thinking" in details["capabilities"]
    assert details["loaded"][0]["name"] == "qwen3:32b"
    assert stats["gpu"] == {
        "available": False,
        "reason": "disabled in the configuration (gpu.enabled)",
    }


def test_stats_model_details_are_cached(gw: Harness) -> None:
    for _ in range(3):
        assert admin(gw, "GET", "/stats")[0] == 200
    shows = [r for r in gw.sim.requests if r.path == "/api/show"]
    assert len(shows) == 1


def test_admin_requests_are_not_user_traffic(gw: Harness) -> None:
    for _ in range(3):
        admin(gw, "GET", "/metrics")
    _, stats = admin_json(gw, "GET", "/stats")
    assert stats["recent"] == []
    assert stats["requests"] == []


@pytest.mark.parametrize("path", ADMIN_PATHS)
def test_public_port_does_not_serve_admin_paths(gw: Harness, path: str) -> None:
    for method in ("GET", "POST"):
        status, _, body = request(gw, method, path, b"{}" if method == "POST" else None)
        assert status == 404, (method, path)
        assert json.loads(body)["error"]["code"] == "not_found"
    assert gw.read(lambda: gw.gateway.state.model) == "qwen3:32b"


def test_unknown_admin_path_and_method(gw: Harness) -> None:
    assert admin(gw, "GET", "/v1/chat/completions")[0] == 404
    status, headers, _ = admin(gw, "GET", "/v1/model/load")
    assert (status, headers["allow"]) == (405, "POST")


# --- access checks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost:18789", "LOCALHOST", "[::1]:1", "127.0.0.1:80"]
)
def test_loopback_hosts_are_allowed(gw: Harness, host: str) -> None:
    assert admin(gw, "GET", "/metrics", headers={"Host": host})[0] == 200


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:18789", "127.0.0.1.nip.io", "localhost:x", "::1", "[::1", ""],
)
def test_foreign_hosts_are_refused(gw: Harness, host: str) -> None:
    status, headers, body = admin(gw, "GET", "/metrics", headers={"Host": host})
    assert status == 421
    assert json.loads(body)["error"]["code"] == "host_not_allowed"
    assert "access-control-allow-origin" not in headers


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "null", "https://localhost.evil.example", "file://"]
)
def test_cross_origin_requests_are_refused(gw: Harness, origin: str) -> None:
    for method, path in (("GET", "/stats"), ("POST", "/v1/model/load")):
        body = {"model": "llama3.2"} if method == "POST" else None
        status, headers, data = admin(gw, method, path, body, headers={"Origin": origin})
        assert status == 403
        assert json.loads(data)["error"]["code"] == "forbidden"
        assert "access-control-allow-origin" not in headers
    assert gw.read(lambda: gw.gateway.state.model) == "qwen3:32b"


def test_local_origin_is_allowed(gw: Harness) -> None:
    status, _, _ = admin(gw, "GET", "/stats", headers={"Origin": "http://localhost:8080"})
    assert status == 200


def test_admin_token(loop_kind: str) -> None:
    token = "s3cret-admin-token"
    with Harness({"gpu.enabled": False, "gateway.admin_token": token}, loop_kind=loop_kind) as h:
        status, headers, body = admin(h, "GET", "/metrics")
        assert status == 401
        assert headers["www-authenticate"].startswith("Bearer")
        assert token not in body.decode()
        for bad in ("Bearer wrong", "Basic czNjcmV0", "Bearer ", f"bearer {token}x", token):
            assert admin(h, "GET", "/stats", headers={"Authorization": bad})[0] == 401, bad
        # Non-ASCII bytes are a 401, never a 500.
        conn = http.client.HTTPConnection("127.0.0.1", h.gateway.admin_port, timeout=10)
        conn.putrequest("GET", "/metrics")
        conn.putheader("Authorization", b"Bearer \xd0\xba")
        conn.endheaders()
        assert conn.getresponse().status == 401
        conn.close()
        good = {"Authorization": f"Bearer {token}"}
        assert admin(h, "GET", "/metrics", headers=good)[0] == 200
        assert admin(h, "GET", "/health", headers={"Authorization": f"bearer {token}"})[0] == 200
        # The token never opens the user port's doors, nor the other way round.
        assert request(h, "GET", "/metrics", headers=good)[0] == 404


def test_host_parsing() -> None:
    assert host_of("LocalHost:80") == "localhost"
    assert host_of("[::1]:8080") == "[::1]"
    assert host_of("127.0.0.1:") is None
    assert host_of("127.0.0.1:\uff18\uff10") is None  # fullwidth digits: not a port
    assert origin_host("http://127.0.0.1:3000") == "127.0.0.1"
    assert origin_host("http://user@localhost") is None
    assert origin_host("ws://localhost") is None
    assert allowed_hosts("0.0.0.0") == allowed_hosts("127.0.0.1")
    assert "10.1.2.3" in allowed_hosts("10.1.2.3")
    assert "[fe80::1]" in allowed_hosts("fe80::1")


# --- hot model load / unload -----------------------------------------------------------------


def test_hot_load_switches_the_default_model(gw: Harness) -> None:
    status, body = admin_json(gw, "POST", "/v1/model/load", {"model": "llama3.2"})
    assert status == 200, body
    assert body["status"] == "loaded"
    assert (body["model"], body["previous_model"]) == ("llama3.2", "qwen3:32b")
    assert body["keep_alive"] == 300
    warm = [r for r in gw.sim.requests if r.path == "/api/generate"][-1].json
    assert warm == {"model": "llama3.2", "prompt": "", "stream": False, "keep_alive": 300}
    assert "llama3.2:latest" in gw.read(lambda: gw.sim.loaded_models)
    # Requests without a model now go to the new default.
    assert post_json(gw, "/v1/chat/completions", CHAT)[0] == 200
    assert gw.sim.requests[-1].json["model"] == "llama3.2"
    assert admin_json(gw, "GET", "/health")[1]["model"] == "llama3.2"


def test_hot_load_keep_forever(loop_kind: str) -> None:
    with Harness(
        {"gpu.enabled": False, "gateway.model_keep_alive": None}, loop_kind=loop_kind
    ) as h:
        assert admin(h, "POST", "/v1/model/load", {"model": "gemma3:4b"})[0] == 200
        assert [r for r in h.sim.requests if r.path == "/api/generate"][-1].json["keep_alive"] == -1


def test_running_request_keeps_its_model(loop_kind: str) -> None:
    with Harness({"gpu.enabled": False}, loop_kind=loop_kind, sim_options={"token_rate": 50}) as h:
        h.sim.next_reply(Reply(tokens=["x"] * 10))
        conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=CALL_TIMEOUT)
        conn.request("POST", "/v1/chat/completions", body=json.dumps({**CHAT, "stream": True}))
        resp = conn.getresponse()
        first = resp.readline()
        assert b'"model":"qwen3:32b"' in first
        assert admin(h, "POST", "/v1/model/load", {"model": "llama3.2"})[0] == 200
        rest = resp.read()
        conn.close()
        assert rest.endswith(b"data: [DONE]\n\n")
        assert b"llama3.2" not in rest
        assert h.read(lambda: h.gateway.state.model) == "llama3.2"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "nope:1b"}, 404, "model_not_found"),
        ({"model": "evil.example/library/x"}, 400, None),
        ({"model": "http://169.254.169.254/"}, 400, None),
        ({"model": "file:///etc/passwd"}, 400, None),
        ({"model": "http://user:pw@127.0.0.1:22"}, 400, None),
        ({"model": "x@sha256:" + "0" * 64}, 400, None),
        ({"model": "../x"}, 400, None),
        ({"model": 7}, 400, None),
        ({}, 400, None),
        (b"[1]", 400, None),
        (b"{", 400, "invalid_json"),
    ],
)
def test_failed_load_changes_nothing(gw: Harness, body: object, status: int, code: str) -> None:
    got, data = admin_json(gw, "POST", "/v1/model/load", body)
    assert got == status
    assert data["error"]["message"]
    if code is not None:
        assert data["error"]["code"] == code
    assert gw.read(lambda: gw.gateway.state.model) == "qwen3:32b"
    # A name that is not a model never reaches Ollama.
    if status == 400:
        assert not any(r.path in ("/api/show", "/api/generate") for r in gw.sim.requests)


def test_load_respects_the_allow_list(loop_kind: str) -> None:
    settings = {"gpu.enabled": False, "model.allowed": ["qwen3:32b"]}
    with Harness(settings, loop_kind=loop_kind) as h:
        status, body = admin_json(h, "POST", "/v1/model/load", {"model": "llama3.2"})
        assert (status, body["error"]["code"]) == (404, "model_not_found")
        assert h.read(lambda: h.gateway.state.model) == "qwen3:32b"


def test_load_with_ollama_down_says_why(loop_kind: str) -> None:
    with Harness({"gpu.enabled": False}, loop_kind=loop_kind, start_simulator=False) as h:
        status, body = admin_json(h, "POST", "/v1/model/load", {"model": "llama3.2"})
        assert status == 502
        assert "cannot connect" in body["error"]["message"]
        assert h.read(lambda: h.gateway.state.model) == "qwen3:32b"


def test_unload(gw: Harness) -> None:
    assert admin(gw, "POST", "/v1/model/load", {"model": "gemma3:4b"})[0] == 200
    assert "gemma3:4b" in gw.read(lambda: gw.sim.loaded_models)
    status, body = admin_json(gw, "POST", "/v1/model/unload", {"model": "gemma3:4b"})
    assert (status, body["status"], body["model"]) == (200, "unloaded", "gemma3:4b")
    assert "gemma3:4b" not in gw.read(lambda: gw.sim.loaded_models)
    last = [r for r in gw.sim.requests if r.path == "/api/generate"][-1].json
    assert last == {"model": "gemma3:4b", "keep_alive": 0}
    # No body: the default model.
    status, body = admin_json(gw, "POST", "/v1/model/unload")
    assert (status, body["model"]) == (200, "gemma3:4b")
    assert admin_json(gw, "POST", "/v1/model/unload", {"model": "nope:1b"})[0] == 404
