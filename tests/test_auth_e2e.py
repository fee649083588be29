"""API keys and rate limits on the real server, seen by real clients."""

from __future__ import annotations

import json
import logging
import urllib.request
from pathlib import Path

import openai
import pytest
from harness import Harness, post_json, request

from clawproxy.simulator import Reply

CANARY = "sk-CANARY-0123456789abcdef"
OTHER = "sk-other-key-987654"
HELLO = {"messages": [{"role": "user", "content": "PROMPT-CANARY"}]}


def keyed_client(h: Harness, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=h.base_url + "/v1", api_key=key, max_retries=0, timeout=20)


def test_keys_guard_v1_but_not_health(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with Harness({"auth.api_keys": [CANARY, OTHER]}) as h:
        for headers in (
            {},
            {"Authorization": "Basic dXNlcjpwdw=="},
            {"Authorization": "Bearer "},
            {"Authorization": "Bearer sk-wrong"},
            {"Authorization": f"Bearer {CANARY}x"},
        ):
            status, resp_headers, body = post_json(h, "/v1/chat/completions", HELLO, headers)
            assert status == 401, headers
            assert resp_headers["www-authenticate"].startswith("Bearer")
            err = json.loads(body)["error"]
            assert err["type"] == "authentication_error"
            assert CANARY.encode() not in body
        status, _, _ = request(h, "GET", "/v1/models")
        assert status == 401
        assert request(h, "GET", "/health")[0] == 200
        # Nothing unauthenticated reached Ollama.
        assert len(h.sim.requests) == 0
        with keyed_client(h, CANARY) as c:
            h.sim.next_reply(Reply(tokens=["welcome"]))
            reply = c.chat.completions.create(model="qwen3:32b", messages=HELLO["messages"])
            assert reply.choices[0].message.content == "welcome"
            assert c.models.list().data
        with keyed_client(h, "sk-nope") as c, pytest.raises(openai.AuthenticationError):
            c.models.list()
        assert h.read(lambda: h.gateway.state.refused["auth_failed"]) >= 7
        # Nor in what operators read: metrics, stats, admin health.
        admin = f"http://127.0.0.1:{h.gateway.admin_port}"
        for path in ("/metrics", "/stats", "/health"):
            with urllib.request.urlopen(admin + path, timeout=10) as resp:
                assert b"CANARY" not in resp.read(), path
    # Neither the key nor the prompt reaches a log line, at any level.
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "CANARY" not in text
    assert "key-" in text  # the access log names the key by its label instead


def test_non_ascii_key_is_401_not_500() -> None:
    with Harness({"auth.api_keys": [CANARY]}) as h:
        import socket

        body = json.dumps(HELLO).encode()
        with socket.create_connection(("127.0.0.1", h.port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Authorization: Bearer \xd0\xba\xd0\xbb\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 401")


def test_key_file_is_reread_on_reload(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"alice {CANARY}\n")
    keys.chmod(0o600)
    with Harness({"auth.api_keys_file": str(keys)}) as h:
        headers = {"Authorization": f"Bearer {OTHER}"}
        assert post_json(h, "/v1/chat/completions", HELLO, headers)[0] == 401
        keys.write_text(f"alice {CANARY}\nbob {OTHER}\n")
        h.read(h.gateway.keys.reload)
        assert post_json(h, "/v1/chat/completions", HELLO, headers)[0] == 200


def test_rate_limit_per_key_with_retry_after() -> None:
    settings = {
        "auth.api_keys": [CANARY, OTHER],
        "gateway.rate_limit.requests_per_second": 0.5,
        "gateway.rate_limit.burst": 2,
    }
    with Harness(settings) as h:
        a = {"Authorization": f"Bearer {CANARY}"}
        b = {"Authorization": f"Bearer {OTHER}"}
        assert post_json(h, "/v1/chat/completions", HELLO, a)[0] == 200
        assert post_json(h, "/v1/chat/completions", HELLO, a)[0] == 200
        status, headers, body = post_json(h, "/v1/chat/completions", HELLO, a)
        assert status == 429
        assert 1 <= int(headers["retry-after"]) <= 2
        assert json.loads(body)["error"]["type"] == "rate_limit_error"
        # One key's traffic never limits another's.
        assert post_json(h, "/v1/chat/completions", HELLO, b)[0] == 200
        assert h.read(lambda: h.gateway.state.refused["rate_limited"]) == 1


def test_forwarded_for_counts_only_from_trusted_proxies() -> None:
    limit = {"gateway.rate_limit.requests_per_second": 0.1, "gateway.rate_limit.burst": 1}
    # Untrusted peer: X-Forwarded-For is ignored, so spoofing it does not buy a new bucket.
    with Harness({**limit, "server.trusted_proxies": []}) as h:
        assert post_json(h, "/v1/chat/completions", HELLO, {"X-Forwarded-For": "1.2.3.4"})[0] == 200
        assert post_json(h, "/v1/chat/completions", HELLO, {"X-Forwarded-For": "5.6.7.8"})[0] == 429
    # Behind a trusted proxy (nginx on loopback), each forwarded client has its own bucket.
    with Harness({**limit, "server.trusted_proxies": ["127.0.0.1"]}) as h:
        assert post_json(h, "/v1/chat/completions", HELLO, {"X-Forwarded-For": "1.2.3.4"})[0] == 200
        assert post_json(h, "/v1/chat/completions", HELLO, {"X-Forwarded-For": "5.6.7.8"})[0] == 200
        assert post_json(h, "/v1/chat/completions", HELLO, {"X-Forwarded-For": "1.2.3.4"})[0] == 429
