"""Endpoints few deployments call are imported on their first request, not at start
(time to listening, idle memory), and then work as if they had always been there."""

from __future__ import annotations

import json
import subprocess
import sys

from harness import Harness, post_json

from clawproxy.http.router import Deferred

DEFERRED = ("clawproxy.app.responses", "clawproxy.app.completions", "clawproxy.app.embeddings")


def test_the_process_starts_without_the_deferred_endpoints() -> None:
    code = (
        "import sys; import clawproxy.process.cli; "
        f"print([m for m in {DEFERRED!r} if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_a_deferred_endpoint_answers_its_first_request_and_the_next() -> None:
    body = {"model": "qwen3:32b", "input": "hi"}
    with Harness() as h:
        route = h.gateway.public.table[b"/v1/responses"][b"POST"]
        assert isinstance(route, Deferred)
        assert route._handler is None  # nothing imported for this gateway yet
        first = post_json(h, "/v1/responses", body)
        loaded = route._handler
        second = post_json(h, "/v1/responses", body)
        assert first[0] == second[0] == 200
        # Imported and bound by the first request, and the same handler served the next.
        assert loaded is not None and route._handler is loaded
        assert loaded.func is sys.modules["clawproxy.app.responses"].responses
        # A bad body is refused by the handler itself, loaded or not.
        status, _, raw = post_json(h, "/v1/completions", {"model": "qwen3:32b"})
        assert status == 400 and json.loads(raw)["error"]["param"] == "prompt"
