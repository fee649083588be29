"""What a web page, a rebound DNS name or a flood of model-list calls can make the public
port do: raw HTTP, as a browser or an attacker would send it.

- Cross-site requests (RELIABILITY 3, "CORS"; checklist row 48): a "simple" POST that a
  browser sends without a preflight (``text/plain``, a form, multipart, a typeless Blob)
  from a foreign ``Origin`` never generates; JSON routes take only ``application/json``;
  the UI's own same-origin calls keep working; ``server.cors.allow_origins`` lets a listed
  browser app in, with the CORS headers a browser needs, and no other.
- ``server.allowed_hosts``: a DNS-rebinding page (a foreign ``Host``) gets 421.
- ``/v1/models`` is served from the catalog's cache, one Ollama call at a time.
- A 404 under ``/ui`` carries the UI's security headers.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator

import pytest
from harness import CALL_TIMEOUT, HELLO, Harness, error_of, raw

from clawproxy.app.ui import CSP
from clawproxy.ollama import catalog

EVIL = "http://evil.example"
APP = "https://app.example:8443"
KEY = "sk-cross-site-0123456789"
BODY = json.dumps(HELLO).encode()
STREAM_BODY = json.dumps({**HELLO, "stream": True}).encode()
SETTINGS = {"gpu.enabled": False}


def chats(h: Harness) -> int:
    return len([r for r in h.sim.requests if r.path == "/api/chat"])


def tags_requests(h: Harness) -> int:
    return len([r for r in h.sim.requests if r.path == "/api/tags"])


@pytest.fixture(scope="module")
def h() -> Iterator[Harness]:
    with Harness(SETTINGS) as harness:
        yield harness
        assert harness.settled()


# --- no web page may make the gateway generate ---------------------------------------------

SIMPLE_POSTS = {
    # What a page can send cross-site with no preflight: fetch(..., {mode: "no-cors"}) or a
    # <form> that submits itself.
    "text/plain": "text/plain;charset=UTF-8",
    "form": "application/x-www-form-urlencoded",
    "multipart": "multipart/form-data; boundary=----x",
    # new Blob([json]) has no type: the browser sends no Content-Type at all.
    "blob": None,
}


@pytest.mark.parametrize("content_type", SIMPLE_POSTS.values(), ids=SIMPLE_POSTS.keys())
@pytest.mark.parametrize("origin", [EVIL, "null", f"{EVIL}:8080"])
def test_a_cross_site_simple_post_never_generates(
    h: Harness, content_type: str | None, origin: str
) -> None:
    before = chats(h)
    headers = {"Origin": origin}
    if content_type is not None:
        headers["Content-Type"] = content_type
    status, resp_headers, body = raw(h, "POST", "/v1/chat/completions", headers, BODY)
    assert status == 403, body
    assert error_of(body)["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in resp_headers
    assert chats(h) == before


@pytest.mark.parametrize("content_type", [*list(SIMPLE_POSTS.values())[:3], "text/json"])
def test_json_routes_take_only_json(h: Harness, content_type: str) -> None:
    before = chats(h)
    headers = {"Content-Type": content_type}
    status, resp_headers, body = raw(h, "POST", "/v1/chat/completions", headers, BODY)
    assert status == 415, body
    assert error_of(body)["code"] == "unsupported_media_type"
    assert resp_headers["x-should-retry"] == "false"
    assert chats(h) == before


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        'application/json; charset="utf-8"',
    ],
)
def test_json_with_or_without_charset_is_served(h: Harness, content_type: str) -> None:
    status, _, body = raw(h, "POST", "/v1/chat/completions", {"Content-Type": content_type}, BODY)
    assert status == 200, body


def test_a_non_utf8_charset_is_refused(h: Harness) -> None:
    headers = {"Content-Type": "application/json; charset=iso-8859-1"}
    assert raw(h, "POST", "/v1/chat/completions", headers, BODY)[0] == 415


def test_no_content_type_from_a_non_browser_client_is_served(h: Harness) -> None:
    # curl -H, http.client and scripts that send none: no Origin, so no page sent it.
    assert raw(h, "POST", "/v1/chat/completions", {}, BODY)[0] == 200


def test_the_ui_same_origin_calls_keep_working(h: Harness) -> None:
    """/ui/chat posts to /v1/chat/completions with Origin equal to the gateway's own."""
    own = f"http://127.0.0.1:{h.port}"
    json_type = {"Content-Type": "application/json"}
    status, headers, body = raw(
        h, "POST", "/v1/chat/completions", {"Origin": own, **json_type}, STREAM_BODY
    )
    assert status == 200
    assert b"data: [DONE]" in body
    assert "access-control-allow-origin" not in headers
    for path in ("/ui/api/stats", "/ui/api/models", "/v1/models"):
        assert raw(h, "GET", path, {"Origin": own})[0] == 200, path
    # Behind nginx (proxy_set_header Host $host) the Host has no port: same host, any port.
    status, _, _ = raw(
        h, "POST", "/v1/chat/completions", {"Origin": "https://gw.example", **json_type}, BODY,
        host="gw.example",
    )  # fmt: skip
    assert status == 200
    # Another port on the same host, or another scheme's default port, is another origin.
    for origin in (f"http://127.0.0.1:{h.port + 1}", "http://127.0.0.1", "https://127.0.0.1"):
        status, _, _ = raw(h, "POST", "/v1/chat/completions", {"Origin": origin}, BODY)
        assert status == 403, origin


@pytest.mark.parametrize("path", ["/ui/api/stats", "/ui/api/models", "/v1/models"])
def test_foreign_origins_cannot_read_the_data_routes(h: Harness, path: str) -> None:
    status, headers, _ = raw(h, "GET", path, {"Origin": EVIL})
    assert status == 403
    assert "access-control-allow-origin" not in headers


def test_without_allowed_origins_there_is_no_preflight(h: Harness) -> None:
    headers = {"Origin": EVIL, "Access-Control-Request-Method": "POST"}
    status, resp_headers, _ = raw(h, "OPTIONS", "/v1/chat/completions", headers)
    assert status == 405
    assert not [name for name in resp_headers if name.startswith("access-control-")]


# --- server.cors.allow_origins ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cors() -> Iterator[Harness]:
    with Harness({**SETTINGS, "server.cors.allow_origins": [APP]}) as harness:
        yield harness
        assert harness.settled()


def test_a_listed_origin_gets_cors_headers_on_every_answer(cors: Harness) -> None:
    json_type = {"Content-Type": "application/json", "Origin": APP}
    for body in (BODY, STREAM_BODY):
        status, headers, reply = raw(cors, "POST", "/v1/chat/completions", json_type, body)
        assert (status, b'"choices"' in reply) == (200, True)
        assert headers["access-control-allow-origin"] == APP
        assert headers["vary"] == "Origin"
        exposed = {h.strip() for h in headers["access-control-expose-headers"].split(",")}
        assert {"retry-after", "x-should-retry"} <= exposed
        assert "access-control-allow-credentials" not in headers
    # Errors too, so the page can read why.
    status, headers, _ = raw(cors, "POST", "/v1/chat/completions", json_type, b"{")
    assert status == 400
    assert headers["access-control-allow-origin"] == APP
    for path in ("/v1/models", "/ui/api/models", "/ui/api/stats"):
        status, headers, _ = raw(cors, "GET", path, {"Origin": APP})
        assert (status, headers["access-control-allow-origin"]) == (200, APP), path
    # Not for anyone else, and never "*".
    status, headers, _ = raw(cors, "GET", "/v1/models", {"Origin": EVIL})
    assert status == 403
    assert "access-control-allow-origin" not in headers
    # A request without Origin still says its answer depends on one (shared caches).
    status, headers, _ = raw(cors, "GET", "/v1/models")
    assert (status, headers["vary"]) == (200, "Origin")
    assert "access-control-allow-origin" not in headers


def test_preflight_for_a_listed_origin(cors: Harness) -> None:
    asked = "authorization, content-type, x-stainless-os"
    headers = {
        "Origin": APP,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": asked,
    }
    status, resp, body = raw(cors, "OPTIONS", "/v1/chat/completions", headers)
    assert (status, body) == (204, b"")
    assert "content-length" not in resp  # RFC 9110 8.6: none on a 204
    assert resp["access-control-allow-origin"] == APP
    assert resp["access-control-allow-methods"] == "POST"
    allowed = {h.strip() for h in resp["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "x-stainless-os"} <= allowed
    assert int(resp["access-control-max-age"]) > 0
    assert "Origin" in resp["vary"]
    assert "access-control-allow-credentials" not in resp
    status, resp, _ = raw(
        cors, "OPTIONS", "/ui/api/stats", {"Origin": APP, "Access-Control-Request-Method": "GET"}
    )
    assert (status, resp["access-control-allow-methods"]) == (204, "GET, HEAD")
    # Preflights are not traffic (browsers send one before many a call).
    counted = cors.read(lambda: list(cors.gateway.state.requests))
    assert not [key for key in counted if key[2] == 204]


def test_preflight_for_anyone_else_is_refused(cors: Harness) -> None:
    for origin in (EVIL, "null", APP.replace("8443", "8444"), APP.upper()):
        headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
        status, resp, _ = raw(cors, "OPTIONS", "/v1/chat/completions", headers)
        assert status == 403, origin
        assert "access-control-allow-origin" not in resp
    # Only routed paths answer a preflight.
    headers = {"Origin": APP, "Access-Control-Request-Method": "GET"}
    assert raw(cors, "OPTIONS", "/v1/nowhere", headers)[0] == 404
    assert raw(cors, "OPTIONS", "/health", headers)[0] == 405


def test_a_listed_origin_still_needs_a_key_and_gets_cors_on_the_401() -> None:
    settings = {**SETTINGS, "server.cors.allow_origins": ["*"], "auth.api_keys": [KEY]}
    with Harness(settings) as h:
        json_type = {"Content-Type": "application/json", "Origin": EVIL}
        status, headers, _ = raw(h, "POST", "/v1/chat/completions", json_type, BODY)
        assert (status, headers["access-control-allow-origin"]) == (401, EVIL)
        status, headers, _ = raw(
            h, "POST", "/v1/chat/completions", {**json_type, "Authorization": f"Bearer {KEY}"}, BODY
        )
        assert (status, headers["access-control-allow-origin"]) == (200, EVIL)
        # A preflight needs no key.
        preflight = {"Origin": EVIL, "Access-Control-Request-Method": "POST"}
        assert raw(h, "OPTIONS", "/v1/chat/completions", preflight)[0] == 204
        assert h.settled()


def test_any_origin_is_ignored_without_api_keys(caplog: pytest.LogCaptureFixture) -> None:
    with Harness({**SETTINGS, "server.cors.allow_origins": ["*"]}) as h:
        json_type = {"Content-Type": "application/json", "Origin": EVIL}
        status, headers, _ = raw(h, "POST", "/v1/chat/completions", json_type, BODY)
        assert status == 403
        assert "access-control-allow-origin" not in headers
        assert chats(h) == 0
    assert any("server.cors.allow_origins" in r.getMessage() for r in caplog.records)


# --- server.allowed_hosts ---------------------------------------------------------------------


def test_any_host_is_served_by_default(h: Harness) -> None:
    assert raw(h, "GET", "/ui/api/stats", host="rebound.example")[0] == 200


def test_a_host_not_listed_gets_421() -> None:
    settings = {**SETTINGS, "server.allowed_hosts": ["gw.example", "127.0.0.1", "::1"]}
    with Harness(settings) as h:
        for path in ("/ui/api/stats", "/ui/api/models", "/v1/models", "/health", "/ui"):
            status, _, body = raw(h, "GET", path, host="rebound.example:8080")
            assert status == 421, path
            assert error_of(body)["code"] == "host_not_allowed"
            for host in ("gw.example", "GW.example:8080", f"127.0.0.1:{h.port}", "[::1]:80"):
                assert raw(h, "GET", path, host=host)[0] == 200, (path, host)
        # A rebound page's POST, same-origin by its own name, never generates.
        rebound = {"Origin": "http://rebound.example:8080", "Content-Type": "application/json"}
        status, _, _ = raw(
            h, "POST", "/v1/chat/completions", rebound, BODY, host="rebound.example:8080"
        )
        assert status == 421
        assert chats(h) == 0
        # HTTP/1.0 may leave Host out; no browser does.
        with socket.create_connection(("127.0.0.1", h.port), timeout=CALL_TIMEOUT) as sock:
            sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")


# --- /v1/models: one Ollama call at a time, cached ----------------------------------------------


async def many_gets(port: int, path: bytes, count: int) -> list[int]:
    async def one() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET %b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path)
        data = await reader.read()
        writer.close()
        await writer.wait_closed()
        return int(data.split(b" ", 2)[1])

    return list(await asyncio.gather(*(one() for _ in range(count))))


def test_model_list_is_cached_and_coalesced() -> None:
    settings = {**SETTINGS, "server.max_connections": 1000}
    with Harness(settings) as h:
        peak = [0]
        count = h.sim._count_connection

        def counting(delta: int) -> None:
            count(delta)
            peak[0] = max(peak[0], h.sim.open_connections)

        h.sim._count_connection = counting  # type: ignore[method-assign]
        statuses = asyncio.run(many_gets(h.port, b"/v1/models", 400))
        assert statuses == [200] * 400
        assert tags_requests(h) == 1
        assert peak[0] == 1
        # The UI's list and the chat path's model check share the same answer.
        assert asyncio.run(many_gets(h.port, b"/ui/api/models", 5)) == [200] * 5
        status, _, _ = raw(h, "POST", "/v1/chat/completions", {}, BODY)
        assert status == 200
        assert tags_requests(h) == 1
        assert h.settled()


def test_model_list_stays_fresh_within_the_ttl(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    raw(h, "GET", "/v1/models")
    before = tags_requests(h)
    monkeypatch.setattr(catalog, "TAGS_TTL_S", 0.0)
    for _ in range(3):
        assert raw(h, "GET", "/v1/models")[0] == 200
    assert tags_requests(h) == before + 3


# --- a 404 under /ui is a UI response ---------------------------------------------------------


@pytest.mark.parametrize("path", ["/ui/nope", "/ui/assets/nope.js", "/ui/api/nope", "/ui/chat/"])
def test_ui_404_carries_the_ui_security_headers(h: Harness, path: str) -> None:
    status, headers, _ = raw(h, "GET", path)
    assert status == 404
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-security-policy"] == CSP.decode()
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    # And a 405 under /ui too; a 404 elsewhere is an API error, as before.
    status, headers, _ = raw(h, "POST", "/ui/chat", {"Content-Type": "application/json"}, b"{}")
    assert (status, headers["x-content-type-options"]) == (405, "nosniff")
    status, headers, _ = raw(h, "GET", "/nowhere")
    assert status == 404
    assert "content-security-policy" not in headers
