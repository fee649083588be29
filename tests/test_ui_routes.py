"""The web UI over raw HTTP: the static manifest, traversal attempts, headers, the snapshot.

RELIABILITY row 48, "static UI": every traversal shape gets 404 and never a file's bytes;
a valid asset comes with the right Content-Type, ``nosniff`` and the CSP. The snapshot
(``/ui/api/stats``) is the admin ``/stats`` plus ``upstream``, leaks no prompt text or client
address, needs a key when keys are configured, and UI requests are not counted as traffic.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import CALL_TIMEOUT, Harness, post_json, request

from clawproxy.app import ui
from clawproxy.app.ui import CONTENT_TYPES, build_manifest

STATIC = ui.STATIC_ROOT
PAGES = {"/ui": "index.html", "/ui/": "index.html", "/ui/chat": "chat.html"}
PAGES["/ui/internals"] = "internals.html"
SETTINGS = {"gpu.enabled": False}
KEY = "sk-ui-routes-0123456789"


@pytest.fixture(scope="module")
def h() -> Iterator[Harness]:
    with Harness(SETTINGS) as harness:
        yield harness


def raw(h: Harness, target: bytes) -> tuple[int, bytes]:
    """One GET written byte for byte (no client library normalises the target)."""
    with socket.create_connection(("127.0.0.1", h.port), timeout=CALL_TIMEOUT) as sock:
        sock.sendall(b"GET %b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head + b"\r\n\r\n" + body


# --- traversal: all 404, never a file ---------------------------------------------------------

TRAVERSALS = [
    # RELIABILITY row 48, as written there.
    b"/ui/../../etc/passwd",
    b"/ui/%2e%2e/%2e%2e/etc/passwd",
    b"/ui/..%2f..%2fetc/passwd",
    b"/ui/%252e%252e/",
    b"/ui/..\\..\\",
    b"/ui/..\\\\..\\\\",
    b"/ui/index.html%00.js",
    # The same ideas against the asset prefix and the package's own files.
    b"/ui/assets/../../ui.py",
    b"/ui/assets/%2e%2e/%2e%2e/ui.py",
    b"/ui/assets/..%2f..%2fui.py",
    b"/ui/assets/%2E%2E%2F%2E%2E%2Fui.py",
    b"/ui/assets/..%5c..%5cui.py",
    b"/ui/assets/style.css%00",
    b"/ui/assets/style.css%00.js",
    b"/ui/assets//style.css",
    b"/ui/assets/./style.css",
    b"/ui/assets/style.css/",
    b"/ui/assets/STYLE.CSS",
    b"/ui/assets/%73tyle.css",
    b"/ui/assets/vendor/uplot/../../style.css",
    b"/ui/assets/vendor/uplot/LICENSE",
    b"/ui/assets/vendor/uplot/VERSION",
    b"/ui/assets/index.html",
    b"/ui/index.html",
    b"/ui/chat.html",
    b"/ui/chat/",
    b"/ui/assets/",
    b"/ui/assets",
    b"/ui/api/",
    b"/ui//etc/passwd",
    b"//ui/assets/style.css",
    b"/UI",
]


@pytest.mark.parametrize("target", TRAVERSALS, ids=[t.decode() for t in TRAVERSALS])
def test_traversal_and_unknown_paths_are_404(h: Harness, target: bytes) -> None:
    status, response = raw(h, target)
    assert status == 404
    assert b"content-type: application/json" in response.lower()
    assert b"root:" not in response
    assert b"import" not in response.split(b"\r\n\r\n", 1)[1]


def test_a_raw_nul_in_the_path_never_reaches_a_file(h: Harness) -> None:
    status, response = raw(h, b"/ui/index.html\x00.js")
    assert status in (400, 404)  # h11 refuses the control byte before routing
    assert b"<html" not in response


def test_manifest_skips_symlinks_odd_names_and_unknown_types(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<p>home</p>")
    (tmp_path / "app.js").write_text("ok")
    (tmp_path / "notes.md").write_text("not served")
    (tmp_path / "a b.js").write_text("odd name")
    (tmp_path / ".hidden.js").write_text("dot file")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.css").write_text("p{}")
    os.symlink("/etc/passwd", tmp_path / "passwd.js")
    os.symlink("/etc", tmp_path / "etc")
    os.symlink(tmp_path, tmp_path / "sub" / "loop")
    manifest = build_manifest(tmp_path)
    assert sorted(manifest) == [b"/ui", b"/ui/", b"/ui/assets/app.js", b"/ui/assets/sub/x.css"]
    assert manifest[b"/ui"].body == b"<p>home</p>"


def test_a_symlink_in_the_ui_dir_is_not_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "index.html").write_text("<p>home</p>")
    (tmp_path / "app.js").write_text("ok")
    os.symlink("/etc/passwd", tmp_path / "passwd.js")
    monkeypatch.setattr(ui, "STATIC_ROOT", tmp_path)
    with Harness(SETTINGS) as gw:
        assert raw(gw, b"/ui/assets/app.js")[0] == 200
        status, response = raw(gw, b"/ui/assets/passwd.js")
        assert status == 404
        assert b"root:" not in response


# --- what is served, and how ------------------------------------------------------------------


def own_files() -> list[Path]:
    return [p for p in STATIC.rglob("*") if p.is_file() and "vendor" not in p.parts]


def test_every_page_and_asset_is_served_with_its_type_and_security_headers(h: Harness) -> None:
    expected = {path: STATIC / name for path, name in PAGES.items()}
    for file in STATIC.rglob("*"):
        if file.suffix in CONTENT_TYPES and file.suffix != ".html":
            expected["/ui/assets/" + file.relative_to(STATIC).as_posix()] = file
    assert "/ui/assets/vendor/uplot/uPlot.iife.min.js" in expected
    for path, file in expected.items():
        status, headers, body = request(h, "GET", path, headers={"Origin": "http://evil.example"})
        assert status == 200, path
        assert body == file.read_bytes(), path
        assert headers["content-type"] == CONTENT_TYPES[file.suffix].decode(), path
        assert headers["x-content-type-options"] == "nosniff"
        csp = headers["content-security-policy"]
        assert "default-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "unsafe" not in csp
        assert headers["referrer-policy"] == "no-referrer"
        vendored = "/vendor/" in path
        assert headers["cache-control"] == ("public, max-age=86400" if vendored else "no-cache")
        assert "access-control-allow-origin" not in headers


def test_head_and_wrong_methods(h: Harness) -> None:
    status, headers, body = request(h, "HEAD", "/ui/chat")
    assert (status, body) == (200, b"")
    assert int(headers["content-length"]) == (STATIC / "chat.html").stat().st_size
    status, headers, _ = request(h, "POST", "/ui", b"{}")
    assert status == 405
    assert headers["allow"] == "GET, HEAD"
    status, headers, _ = request(
        h,
        "OPTIONS",
        "/ui/api/stats",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert status == 405
    assert "access-control-allow-origin" not in headers


def test_pages_reference_only_served_files_and_no_inline_code(h: Harness) -> None:
    routes = set(h.gateway.public.table)
    for name in ("index.html", "chat.html", "internals.html"):
        html = (STATIC / name).read_text()
        refs = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert refs, name
        for ref in refs:
            assert ref.startswith("/ui"), f"{name} loads {ref} from outside the gateway"
            assert ref.encode() in routes, f"{name} references {ref}, which is not served"
        # The CSP forbids inline code; make sure none is written either.
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), name
        assert not re.search(r"\son\w+=|\sstyle=|<style", html), name


def test_own_scripts_never_use_html_sinks_or_remote_urls() -> None:
    for file in own_files():
        text = file.read_text()
        sinks = (".innerHTML", ".outerHTML", ".insertAdjacentHTML", "document.write", "eval(")
        for sink in (*sinks, "new Function"):
            assert sink not in text, f"{file.name} uses {sink}"
        if file.suffix != ".svg":  # the SVG's xmlns is a name, not a fetch
            assert not re.search(r"https?://", text), f"{file.name} names a remote URL"
            assert "@import" not in text and "@font-face" not in text


# --- the snapshot -----------------------------------------------------------------------------


Json = dict[str, Any]


def get_stats(
    h: Harness, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Json]:
    status, hdrs, body = request(h, "GET", "/ui/api/stats", headers=headers)
    return status, hdrs, json.loads(body)


def test_snapshot_is_the_admin_stats_plus_upstream() -> None:
    with Harness(SETTINGS) as gw:
        status, headers, body = get_stats(gw)
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert headers["cache-control"] == "no-store"
        assert headers["x-content-type-options"] == "nosniff"
        assert body["upstream"]["reachable"] is True
        assert body["upstream"]["version"] == "0.33.0"
        assert body["model"] == "qwen3:32b"
        assert body["model_details"]["details"]["family"] == "qwen3"
        assert len(body["requests_per_second_series"]) == 60
        conn = http.client.HTTPConnection("127.0.0.1", gw.gateway.admin_port, timeout=10)
        try:
            conn.request("GET", "/stats")
            admin_body = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        # One snapshot: the admin port's /stats carries the same keys, upstream included.
        assert set(admin_body) == set(body)


def test_snapshot_holds_no_prompt_or_client_address_and_ui_is_not_traffic() -> None:
    prompt = "my-secret-prompt-41"
    with Harness(SETTINGS) as gw:
        for path in ("/ui", "/ui/chat", "/ui/assets/style.css", "/ui/api/stats"):
            assert request(gw, "GET", path)[0] == 200
        _, _, before = get_stats(gw)
        assert before["recent"] == []
        assert before["requests"] == []
        assert sum(before["requests_per_second_series"]) == 0
        chat = {"messages": [{"role": "user", "content": prompt}], "stream": True}
        assert post_json(gw, "/v1/chat/completions", chat)[0] == 200
        _, _, raw_body = request(gw, "GET", "/ui/api/stats")
        assert prompt.encode() not in raw_body
        assert b"127.0.0.1" not in raw_body
        after = json.loads(raw_body)
        assert [r["endpoint"] for r in after["recent"]] == ["/v1/chat/completions"]
        assert sum(after["requests_per_second_series"]) == 1


def test_upstream_answer_is_cached(h: Harness) -> None:
    def version_calls() -> int:
        return sum(1 for r in h.sim.requests if r.path == "/api/version")

    get_stats(h)
    seen = version_calls()
    for _ in range(3):
        assert get_stats(h)[2]["upstream"]["reachable"] is True
    assert version_calls() == seen


def test_snapshot_reports_ollama_down() -> None:
    with Harness(SETTINGS, start_simulator=False) as gw:
        status, _, body = get_stats(gw)
        assert status == 200
        assert body["upstream"]["reachable"] is False
        assert body["upstream"]["error"]
        assert "error" in body["model_details"]


def test_snapshot_needs_a_key_when_keys_are_configured() -> None:
    with Harness({**SETTINGS, "auth.api_keys": [KEY]}) as gw:
        status, headers, body = get_stats(gw)
        assert status == 401
        assert headers["www-authenticate"].startswith("Bearer")
        assert body["error"]["code"]
        assert get_stats(gw, {"Authorization": "Bearer sk-wrong"})[0] == 401
        status, _, body = get_stats(gw, {"Authorization": f"Bearer {KEY}"})
        assert status == 200
        assert body["model"] == "qwen3:32b"
        # The pages themselves are public: they hold no data, and ask for the key.
        assert request(gw, "GET", "/ui")[0] == 200


def test_ui_disabled_is_all_404() -> None:
    with Harness({**SETTINGS, "ui.enabled": False}) as gw:
        for path in ("/ui", "/ui/", "/ui/chat", "/ui/internals", "/ui/api/stats", "/ui/api/models"):
            assert request(gw, "GET", path)[0] == 404, path
        assert request(gw, "GET", "/ui/assets/style.css")[0] == 404
        assert request(gw, "GET", "/v1/models")[0] == 200
        assert not any(path.startswith(b"/ui") for path in gw.gateway.public.table)


# --- the chat page's model list ---------------------------------------------------------------


def test_model_list_for_the_chat_page_is_not_traffic(h: Harness) -> None:
    _, _, before = get_stats(h)
    status, headers, body = request(h, "GET", "/ui/api/models")
    assert status == 200
    assert headers["cache-control"] == "no-store"
    assert headers["x-content-type-options"] == "nosniff"
    listed = json.loads(body)
    assert listed["default_model"] == "qwen3:32b"
    assert listed["object"] == "list"
    _, _, public = request(h, "GET", "/v1/models")
    assert listed["data"] == json.loads(public)["data"]
    _, _, after = get_stats(h)
    # Only the public /v1/models call above is traffic, not the UI's own list.
    assert after["recent"][0]["endpoint"] == "/v1/models"
    assert served(after, "/v1/models") == served(before, "/v1/models") + 1
    assert served(after, "/ui/api/models") == 0


def served(stats: Json, endpoint: str) -> int:
    return sum(r["count"] for r in stats["requests"] if r["endpoint"] == endpoint)


def test_model_list_needs_a_key_when_keys_are_configured() -> None:
    with Harness({**SETTINGS, "auth.api_keys": [KEY]}) as gw:
        status, headers, _ = request(gw, "GET", "/ui/api/models")
        assert status == 401
        assert headers["www-authenticate"].startswith("Bearer")
        auth = {"Authorization": f"Bearer {KEY}"}
        status, _, body = request(gw, "GET", "/ui/api/models", headers=auth)
        assert status == 200
        assert len(json.loads(body)["data"]) == 3
