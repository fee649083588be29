"""The gateway against an Ollama look-alike that is not the project's own simulator.

A deliberately different stand-in: the standard library's ``http.server`` (threads, not
asyncio), Python's ``json`` with its default ``ensure_ascii`` (so every non-ASCII character
arrives as a ``\\uXXXX`` escape, unlike Go), spaces after separators, and its own way of
cutting chunks (two NDJSON lines per chunk, the newline of one line at the start of the
next chunk). If the gateway leaned on quirks of our simulator, this would show it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest
from harness import Harness

TOKENS = ["Grüße", ", 漢字", " <b>&", ' "q"', " \\", "\n🦀", " end"]
MODEL = "foreign:latest"


class FakeOllama(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]] = []  # noqa: RUF012 - shared with the test on purpose

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path != "/api/tags":
            self.send_error(404)
            return
        body = json.dumps({"models": [{"name": MODEL, "modified_at": "2026-01-02T03:04:05Z"}]})
        self._send_json(200, body.encode())

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        request = json.loads(self.rfile.read(length))
        self.seen.append(request)
        if request.get("model") != MODEL:
            self._send_json(
                404, json.dumps({"error": f"model '{request['model']}' not found"}).encode()
            )
            return
        lines = [
            json.dumps(
                {"model": MODEL, "message": {"role": "assistant", "content": t}, "done": False}
            )
            for t in TOKENS
        ]
        lines.append(
            json.dumps(
                {
                    "model": MODEL,
                    "message": {"role": "assistant", "content": ""},
                    "done": True,
                    "done_reason": "stop",
                    "prompt_eval_count": 3,
                    "eval_count": len(TOKENS),
                }
            )
        )
        body = "\n".join(lines).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        # Cut the body at odd places: a chunk boundary inside a line, lines run together.
        step = max(1, len(body) // 5)
        for start in range(0, len(body), step):
            piece = body[start : start + step]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _send_json(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def foreign() -> Iterator[Harness]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOllama)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeOllama.seen = []
    settings = {"model.endpoint": f"http://127.0.0.1:{server.server_port}", "model.name": MODEL}
    try:
        with Harness(settings, start_simulator=False) as h:
            yield h
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_streaming_and_whole_replies_from_a_foreign_upstream(foreign: Harness) -> None:
    client = foreign.openai_client()
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "hi"}],
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(TOKENS)
    assert chunks[-1].usage.completion_tokens == len(TOKENS)
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=0.1
    )
    assert reply.choices[0].message.content == "".join(TOKENS)
    assert FakeOllama.seen[-1]["options"]["temperature"] == 0.1
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_foreign_upstream_errors_map_the_same(foreign: Harness) -> None:
    client = foreign.openai_client()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
    # Refused by the allow-list (Ollama's own model list) before any generation.
    assert FakeOllama.seen == []
