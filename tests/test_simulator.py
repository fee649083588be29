"""The Ollama simulator, seen from a raw socket: shapes, bytes, faults and recording.

Every test runs on stock asyncio and on uvloop. The client below is deliberately dumb: it
reads the head, then chunks one by one, keeping chunk boundaries so framing faults are
visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from harness import Runner
from hypothesis import given
from hypothesis import strategies as st

from clawproxy.simulator import (
    OLLAMA_VERSION,
    Fault,
    OllamaSimulator,
    Reply,
    demo_script,
    go_dumps,
    go_time,
    numbered_script,
    split_words,
    tool_call,
)
from clawproxy.simulator.catalog import parse_keep_alive
from clawproxy.simulator.gojson import go_string
from clawproxy.simulator.wire import chunk, response_head

IO_TIMEOUT = 5.0
# How long "nothing arrives" is watched for; short, the positive case would be instant.
QUIET_WINDOW = 0.1
ERROR_LINE = b'{"error":"an error was encountered while running the model"}\n'


# -- a tiny HTTP/1.1 client ---------------------------------------------------------------


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    head: bytes
    chunks: list[bytes] = field(default_factory=list)
    body: bytes = b""
    finished: bool = False

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    @property
    def lines(self) -> list[bytes]:
        return self.body.splitlines(keepends=True)


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def send(self, method: str, path: str, body: Any = None, **headers: str) -> None:
        self.writer.write(request_bytes(method, path, body, **headers))

    async def head(self) -> Response:
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = raw.decode("latin-1").split("\r\n")[:-2]
        _, status, reason = status_line.split(" ", 2)
        headers = [tuple(line.split(": ", 1)) for line in header_lines]
        return Response(int(status), reason, headers, raw)  # type: ignore[arg-type]

    async def chunk(self) -> bytes | None:
        """One chunk's payload; ``None`` for the last chunk."""
        size_line = await self.reader.readuntil(b"\r\n")
        size = int(size_line[:-2], 16)
        payload = await self.reader.readexactly(size + 2)
        assert payload[-2:] == b"\r\n"
        if size == 0:
            return None
        return payload[:-2]

    async def response(self, *, head_request: bool = False) -> Response:
        response = await self.head()
        if head_request:
            return response
        if response.header("Transfer-Encoding") == "chunked":
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while (payload := await self.chunk()) is not None:
                    response.chunks.append(payload)
                response.finished = True
            response.body = b"".join(response.chunks)
        else:
            length = int(response.header("Content-Length") or 0)
            try:
                response.body = await self.reader.readexactly(length)
                response.finished = True
            except asyncio.IncompleteReadError as exc:
                response.body = exc.partial
        return response

    async def quiet(self) -> bool:
        """True if nothing arrives (and the socket stays open) for QUIET_WINDOW."""
        try:
            async with asyncio.timeout(QUIET_WINDOW):
                data = await self.reader.read(1)
        except TimeoutError:
            return True
        assert data == b"", f"unexpected bytes {data!r}"
        return False

    async def eof(self) -> bool:
        """True when the peer closed (FIN or RST) and no more bytes came."""
        try:
            return await self.reader.read() == b""
        except ConnectionResetError:
            return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def request_bytes(method: str, path: str, body: Any = None, **headers: str) -> bytes:
    data = b"" if body is None else body if isinstance(body, bytes) else orjson.dumps(body)
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1:11434"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    if data or method == "POST":
        lines.append(f"Content-Length: {len(data)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


@contextlib.asynccontextmanager
async def connect(sim: OllamaSimulator) -> AsyncIterator[Client]:
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    client = Client(reader, writer)
    try:
        async with asyncio.timeout(IO_TIMEOUT):
            yield client
    finally:
        await client.close()


async def exchange(sim: OllamaSimulator, method: str, path: str, body: Any = None) -> Response:
    async with connect(sim) as client:
        client.send(method, path, body)
        return await client.response(head_request=method == "HEAD")


def chat(content: str = "Hi", **extra: Any) -> dict[str, Any]:
    return {"model": "qwen3:32b", "messages": [{"role": "user", "content": content}], **extra}


def with_sim(**kwargs: Any) -> Callable[..., Callable[[Runner], None]]:
    """Run the test body with a started simulator (token_rate None unless given)."""
    kwargs.setdefault("token_rate", None)

    def decorate(
        body: Callable[[OllamaSimulator], Awaitable[None]],
    ) -> Callable[[Runner], None]:
        def test(run: Runner) -> None:
            async def main() -> None:
                async with OllamaSimulator(**kwargs) as sim:
                    await body(sim)

            run(main())

        test.__name__ = body.__name__
        return test

    return decorate


# -- Go JSON, byte for byte ---------------------------------------------------------------


def test_go_dumps_escapes_like_go() -> None:
    assert go_dumps({"a": "<b>&c"}) == b'{"a":"\\u003cb\\u003e\\u0026c"}'
    assert go_dumps("\u2028x\u2029") == b'"\\u2028x\\u2029"'
    assert go_dumps("\x00\x01\x08\x0c\n\r\t\x1f\x7f") == (
        b'"\\u0000\\u0001\\b\\f\\n\\r\\t\\u001f\x7f"'
    )
    assert go_dumps('"\\/') == b'"\\"\\\\/"'
    assert go_dumps("中文 😀 é \u0085") == '"中文 😀 é \u0085"'.encode()
    assert go_dumps("a\ud800b\udcff") == b'"a\\ufffdb\\ufffd"'
    assert go_dumps({"z": 1, "a": [True, None, False, -7]}) == b'{"z":1,"a":[true,null,false,-7]}'


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3.0, b"3"),
        (0.0, b"0"),
        (-0.0, b"-0"),
        (0.1, b"0.1"),
        (1e-6, b"0.000001"),
        (1e-7, b"1e-7"),
        (1.5e-7, b"1.5e-7"),
        (1e-10, b"1e-10"),
        (1e20, b"100000000000000000000"),
        (1e21, b"1e+21"),
        (123456789.125, b"123456789.125"),
        (-2.5, b"-2.5"),
    ],
)
def test_go_dumps_floats(value: float, expected: bytes) -> None:
    assert go_dumps(value) == expected


def test_go_dumps_rejects_what_go_rejects() -> None:
    with pytest.raises(ValueError):
        go_dumps(float("nan"))
    with pytest.raises(TypeError):
        go_dumps({1: "x"})
    with pytest.raises(TypeError):
        go_dumps(object())


def _reference_go_string(text: str) -> bytes:
    """Go's encodeState.string, written out rune by rune."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in "\n\r\t\b\f":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}[ch])
        elif code < 0x20 or ch in "<>&\u2028\u2029":
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\\ufffd")
        else:
            out.append(ch)
    return ("".join(out) + '"').encode("utf-8")


@given(st.text())
def test_go_string_matches_reference(text: str) -> None:
    assert go_string(text) == _reference_go_string(text)


def test_go_time_trims_fraction() -> None:
    assert go_time(0) == "1970-01-01T00:00:00Z"
    assert go_time(1_500_000_000) == "1970-01-01T00:00:01.5Z"
    assert go_time(123) == "1970-01-01T00:00:00.000000123Z"
    assert go_time(1_787_337_702_184_789_000) == "2026-08-21T18:41:42.184789Z"


def test_wire_framing() -> None:
    assert chunk(b"abc") == b"3\r\nabc\r\n"
    assert chunk(b"x" * 26).startswith(b"1a\r\n")
    head = response_head(200, [("Content-Type", "application/x-ndjson")], chunked=True)
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    assert lines[1] == "Content-Type: application/x-ndjson"
    assert re.fullmatch(r"Date: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", lines[2])
    assert lines[3:] == ["Transfer-Encoding: chunked", "", ""]


# -- scripts and parsing -------------------------------------------------------------------


@given(st.text())
def test_split_words_round_trips(text: str) -> None:
    assert "".join(split_words(text)) == text


def test_demo_script_is_deterministic_and_honours_num_predict() -> None:
    request = chat("Why is the sky blue?")
    first, second = demo_script(request), demo_script(request)
    assert first.tokens == second.tokens and 30 <= len(first.tokens) <= 60
    assert first.tokens[1].startswith(" ") and "blue?" in "".join(first.tokens)
    assert first.thinking == [] and first.done_reason == "stop"
    limited = demo_script({**request, "think": True, "options": {"num_predict": 25}})
    assert len(limited.thinking) + len(limited.tokens) == 25
    assert limited.thinking and limited.done_reason == "length"


def test_numbered_script() -> None:
    reply = numbered_script(3)({"model": "m"})
    assert reply.tokens == [" t0001", " t0002", " t0003"] and reply.done_reason == "stop"
    limited = numbered_script()({"options": {"num_predict": 12}})
    assert len(limited.tokens) == 12 and limited.tokens[-1] == " t0012"
    assert limited.done_reason == "length"


def test_fault_parse() -> None:
    assert Fault.parse("stall_after=5, byte_by_byte") == Fault(stall_after=5, byte_by_byte=True)
    assert Fault.parse("first_delay=0.25 status=500") == Fault(first_delay=0.25, status=500)
    assert Fault.parse("extra_bytes=zz") == Fault(extra_bytes=b"zz")
    with pytest.raises(ValueError, match="unknown"):
        Fault.parse("explode")
    with pytest.raises(ValueError, match="needs a value"):
        Fault.parse("stall_after")


def test_keep_alive_parsing() -> None:
    assert parse_keep_alive("5m") == 300 * 10**9
    assert parse_keep_alive("1h30m") == 5400 * 10**9
    assert parse_keep_alive(0) == 0 and parse_keep_alive("0") == 0
    assert parse_keep_alive(2.5) == 2_500_000_000
    assert parse_keep_alive(-1) == parse_keep_alive("-1m") == 2**63 - 1
    with pytest.raises(ValueError, match="missing unit"):
        parse_keep_alive("300")


# -- endpoints ------------------------------------------------------------------------------

TOKEN_LINE = re.compile(
    rb'\{"model":"qwen3:32b","created_at":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{0,8}[1-9])?Z",'
    rb'"message":\{"role":"assistant","content":"(?P<content>[^"]*)"\},"done":false\}\n'
)


@with_sim()
async def test_chat_stream_shape(sim: OllamaSimulator) -> None:
    sim.next_reply(Reply(tokens=["Hel", "lo <b> & 中😀"], prompt_eval_count=0))
    response = await exchange(sim, "POST", "/api/chat", chat(think=False))
    assert (response.status, response.reason) == (200, "OK")
    assert [name for name, _ in response.headers] == [
        "Content-Type",
        "Date",
        "Transfer-Encoding",
    ]
    assert response.header("Content-Type") == "application/x-ndjson"
    assert response.finished
    # One chunk per line, each a complete NDJSON line.
    assert len(response.chunks) == 3
    assert all(c.endswith(b"\n") and c.count(b"\n") == 1 for c in response.chunks)
    first, second, done = response.chunks
    assert TOKEN_LINE.fullmatch(first)
    match = TOKEN_LINE.fullmatch(second)
    assert match and match["content"] == "lo \\u003cb\\u003e \\u0026 中😀".encode()
    final = orjson.loads(done)
    assert list(final) == [
        "model",
        "created_at",
        "message",
        "done",
        "done_reason",
        "total_duration",
        "load_duration",
        "eval_count",
        "eval_duration",
    ]  # zero prompt count and duration are omitted, like Go's omitempty
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["done"] is True and final["done_reason"] == "stop" and final["eval_count"] == 2
    assert all(isinstance(final[k], int) and final[k] > 0 for k in list(final)[5:])


@with_sim()
async def test_chat_thinking_and_tool_call_lines(sim: OllamaSimulator) -> None:
    call = tool_call("get_weather", {"city": "Tokyo", "unit": "<c>"})
    sim.next_reply(Reply(tokens=["ok"], thinking=["hmm"], tool_calls=[call], done_content="!"))
    response = await exchange(sim, "POST", "/api/chat", chat())
    think, content, calls, done = response.chunks
    assert b'"message":{"role":"assistant","content":"","thinking":"hmm"},"done":false}\n' in think
    assert orjson.loads(content)["message"] == {"role": "assistant", "content": "ok"}
    assert calls.endswith(
        b'"message":{"role":"assistant","content":"","tool_calls":[{"id":"'
        + call["id"].encode()
        + b'","function":{"index":0,"name":"get_weather",'
        b'"arguments":{"city":"Tokyo","unit":"\\u003cc\\u003e"}}}]},"done":false}\n'
    )
    assert orjson.loads(done)["message"]["content"] == "!"
    assert re.fullmatch(r"call_[0-9a-f]{8}", call["id"])


@with_sim()
async def test_chat_non_stream(sim: OllamaSimulator) -> None:
    sim.next_reply(Reply(tokens=["a", " <b>"], thinking=["x", "y"]))
    response = await exchange(sim, "POST", "/api/chat", chat(stream=False))
    assert response.header("Content-Type") == "application/json; charset=utf-8"
    assert int(response.header("Content-Length") or 0) == len(response.body)
    assert not response.body.endswith(b"\n")
    assert b'"content":"a \\u003cb\\u003e","thinking":"xy"},"done":true,"done_reason":"stop"' in (
        response.body
    )
    assert orjson.loads(response.body)["eval_count"] == 4


@with_sim()
async def test_generate_stream_and_non_stream(sim: OllamaSimulator) -> None:
    call = tool_call("f", {})
    sim.next_reply(Reply(tokens=["x"], thinking=["t"], tool_calls=[call]))
    body = {"model": "llama3.2", "prompt": "hello"}
    response = await exchange(sim, "POST", "/api/generate", body)
    think, token, done = response.chunks
    assert think.endswith(b'"response":"","thinking":"t","done":false}\n')
    assert token.startswith(b'{"model":"llama3.2","created_at":"')
    assert token.endswith(b'"response":"x","done":false}\n')
    keys = list(orjson.loads(done))
    assert keys[:6] == ["model", "created_at", "response", "done", "done_reason", "context"]
    assert keys[-2:] == ["eval_duration", "tool_calls"]
    whole = await exchange(sim, "POST", "/api/generate", {**body, "stream": False})
    assert orjson.loads(whole.body)["response"].startswith("Hello! I am the clawproxy demo")


@with_sim()
async def test_load_unload_and_ps(sim: OllamaSimulator) -> None:
    loaded = await exchange(sim, "POST", "/api/chat", {"model": "qwen3:32b", "messages": []})
    assert loaded.header("Content-Type") == "application/json; charset=utf-8"
    assert re.fullmatch(
        rb'\{"model":"qwen3:32b","created_at":"[^"]+","message":\{"role":"assistant",'
        rb'"content":""\},"done":true,"done_reason":"load"\}',
        loaded.body,
    )
    await exchange(sim, "POST", "/api/generate", {"model": "llama3.2"})
    ps = orjson.loads((await exchange(sim, "GET", "/api/ps")).body)
    assert {m["name"] for m in ps["models"]} == {"qwen3:32b", "llama3.2:latest"}
    entry = ps["models"][0]
    assert list(entry) == [
        "name",
        "model",
        "size",
        "digest",
        "details",
        "expires_at",
        "size_vram",
        "context_length",
    ]
    unload = await exchange(sim, "POST", "/api/chat", {"model": "qwen3:32b", "keep_alive": 0})
    assert unload.body.endswith(b'"done":true,"done_reason":"unload"}')
    generate_unload = await exchange(
        sim, "POST", "/api/generate", {"model": "llama3.2", "keep_alive": "0s"}
    )
    assert generate_unload.body.endswith(b'"response":"","done":true,"done_reason":"unload"}')
    assert sim.loaded_models == []
    # A chat with keep_alive 0 loads only for the request.
    await exchange(sim, "POST", "/api/chat", chat(keep_alive=0))
    assert sim.loaded_models == []
    await exchange(sim, "POST", "/api/chat", chat(keep_alive=-1))
    assert sim.loaded_models == ["qwen3:32b"]


@with_sim()
async def test_plain_endpoints(sim: OllamaSimulator) -> None:
    root = await exchange(sim, "GET", "/")
    assert (root.status, root.body) == (200, b"Ollama is running")
    head = await exchange(sim, "HEAD", "/")
    assert head.status == 200 and head.header("Content-Length") == "17"
    version = await exchange(sim, "GET", "/api/version")
    assert version.body == b'{"version":"%s"}' % OLLAMA_VERSION.encode()
    tags = orjson.loads((await exchange(sim, "GET", "/api/tags")).body)
    assert tags["models"][0]["name"] == "qwen3:32b"
    assert list(tags["models"][0]) == ["name", "model", "modified_at", "size", "digest", "details"]
    assert tags["models"][0]["details"]["quantization_level"] == "Q4_K_M"
    show = await exchange(sim, "POST", "/api/show", {"model": "QWEN3:32B"})
    assert "thinking" in orjson.loads(show.body)["capabilities"]
    model_info = orjson.loads(show.body)["model_info"]
    assert list(model_info) == sorted(model_info)
    missing = await exchange(sim, "POST", "/api/show", {"model": "nope"})
    assert (missing.status, missing.body) == (404, b'{"error":"model \'nope\' not found"}')


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "expected"),
    [
        ("GET", "/api/nope", None, 404, b"404 page not found"),
        ("GET", "/api/chat", None, 405, b"405 method not allowed"),
        ("POST", "/api/chat", {"model": "foo", "messages": []}, 404, b"model 'foo' not found"),
        ("POST", "/api/chat", {"messages": []}, 400, b"model is required"),
        ("POST", "/api/chat", b"{nope", 400, b"unexpected EOF"),
        ("POST", "/api/chat", b"", 400, b"missing request body"),
        ("POST", "/api/chat", [1], 400, b"cannot unmarshal array"),
        ("POST", "/api/chat", {"model": 3}, 400, b"ChatRequest.model of type string"),
        ("POST", "/api/generate", {"model": "llama3.2", "keep_alive": "9"}, 400, b"missing unit"),
        ("POST", "/api/chat", chat(think="lots"), 400, b"invalid think value"),
        ("POST", "/api/chat", {**chat(), "model": "llama3.2", "think": True}, 400, b"thinking"),
        ("POST", "/api/chat", {**chat(), "model": "gemma3:4b", "tools": [{}]}, 400, b"tools"),
    ],
)
def test_errors(
    run: Runner, method: str, path: str, body: Any, status: int, expected: bytes
) -> None:
    async def main() -> None:
        async with OllamaSimulator(token_rate=None) as sim:
            response = await exchange(sim, method, path, body)
            assert response.status == status
            assert expected in response.body
            if path.startswith("/api/") and status != 405 and response.status != 404:
                assert response.body.startswith(b'{"error":"')
            assert len(sim.streams) == 0  # no generation started

    run(main())


@with_sim()
async def test_expect_100_continue(sim: OllamaSimulator) -> None:
    async with connect(sim) as client:
        body = orjson.dumps(chat(stream=False))
        head = request_bytes("POST", "/api/chat", body, Expect="100-continue")
        client.writer.write(head[: -len(body)])
        assert await client.reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.writer.write(body)
        assert (await client.response()).finished


@with_sim()
async def test_host_check(sim: OllamaSimulator) -> None:
    async with connect(sim) as client:
        client.writer.write(b"GET /api/version HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        response = await client.response()
        assert (response.status, response.body) == (403, b"")
        client.writer.write(b"GET /api/version HTTP/1.1\r\nHost: box.internal:80\r\n\r\n")
        assert (await client.response()).status == 200


@with_sim()
async def test_keep_alive_and_pipelining(sim: OllamaSimulator) -> None:
    async with connect(sim) as client:
        client.send("POST", "/api/chat", chat())
        first = await client.response()
        client.send("GET", "/api/version")
        client.send("POST", "/api/chat", chat(stream=False))
        second, third = await client.response(), await client.response()
        assert first.finished and second.status == 200 and third.finished
        client.send("GET", "/", Connection="close")
        last = await client.response()
        assert last.header("Connection") == "close"
        assert await client.eof()
    assert {r.connection_id for r in sim.requests} == {sim.requests[0].connection_id}
    assert sim.connections_total == 1


# -- faults, seen from the client ------------------------------------------------------------


async def start_stream(client: Client, fault: Fault, sim: OllamaSimulator, **reply: Any) -> None:
    reply.setdefault("tokens", [" one", " two", " three", " four"])
    sim.next_reply(Reply(fault=fault, **reply))
    client.send("POST", "/api/chat", chat())


@with_sim()
async def test_blackhole(sim: OllamaSimulator) -> None:
    async with connect(sim) as client:
        await start_stream(client, Fault(blackhole=True), sim)
        await sim.wait_for(lambda: sim.active_streams == 1)
        assert await client.quiet()
    assert await sim.streams[0].wait_ended(IO_TIMEOUT) == "client_closed"


@with_sim()
async def test_stall_after(sim: OllamaSimulator) -> None:
    async with connect(sim) as client:
        await start_stream(client, Fault(stall_after=2), sim)
        response = await client.head()
        assert await client.chunk() and await client.chunk()
        assert await client.quiet()
        assert sim.streams[0].active and sim.streams[0].tokens_sent == 2
        assert response.status == 200
    assert await sim.streams[0].wait_ended(IO_TIMEOUT) == "client_closed"


@with_sim()
async def test_stall_after_zero_sends_only_the_head(sim: OllamaSimulator) -> None:
    async with connect(sim) as client:
        await start_stream(client, Fault(stall_after=0), sim)
        assert (await client.head()).status == 200
        assert await client.quiet()


@with_sim()
async def test_reset_after(sim: OllamaSimulator) -> None:
    async with connect(sim) as client:
        await start_stream(client, Fault(reset_after=2), sim)
        await client.head()
        assert b" one" in (await client.chunk() or b"")
        assert b" two" in (await client.chunk() or b"")
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await client.chunk()
    assert sim.streams[0].outcome == "fault"


@with_sim()
async def test_truncate_chunked(sim: OllamaSimulator) -> None:
    async with connect(sim) as client:
        await start_stream(client, Fault(truncate_chunked=1), sim)
        response = await client.response()
        assert len(response.chunks) == 1 and not response.finished
        assert await client.eof()
    async with connect(sim) as client:
        await start_stream(client, Fault(truncate_chunked=1, truncate_mid_chunk=True), sim)
        await client.head()
        await client.chunk()
        with pytest.raises(asyncio.IncompleteReadError) as cut:
            await client.chunk()
        assert cut.value.partial  # some of the next chunk arrived, then FIN
    assert [s.outcome for s in sim.streams] == ["fault", "fault"]


@with_sim()
async def test_eof_no_done_and_extra_after_done(sim: OllamaSimulator) -> None:
    async with connect(sim) as client:
        await start_stream(client, Fault(eof_no_done=True), sim)
        response = await client.response()
        assert response.finished and len(response.chunks) == 4
        assert all(orjson.loads(line)["done"] is False for line in response.lines)
        await start_stream(client, Fault(extra_after_done=True, extra_bytes=b"tail\n"), sim)
        response = await client.response()
        assert response.finished and response.chunks[-1] == b"tail\n"
        assert orjson.loads(response.chunks[-2])["done"] is True


@with_sim()
async def test_error_line_after(sim: OllamaSimulator) -> None:
    async with connect(sim) as client:
        await start_stream(client, Fault(error_line_after=1), sim)
        response = await client.response()
        assert response.status == 200 and response.finished
        assert response.chunks[1] == ERROR_LINE and len(response.chunks) == 2
        # The body ended cleanly, so the connection is still usable.
        client.send("GET", "/api/version")
        assert (await client.response()).status == 200
    assert sim.streams[0].outcome == "fault"


@with_sim()
async def test_status_and_redirect(sim: OllamaSimulator) -> None:
    html = b"<html><body>502 Bad Gateway</body></html>"
    fault = Fault(status=502, body=html, content_type="text/html")
    async with connect(sim) as client:
        await start_stream(client, fault, sim)
        response = await client.response()
        assert (response.status, response.reason, response.body) == (502, "Bad Gateway", html)
        assert response.header("Content-Type") == "text/html"
        await start_stream(client, Fault(status=500), sim)
        response = await client.response()
        assert response.status == 500 and response.body.startswith(b'{"error":')
        await start_stream(client, Fault(redirect="http://169.254.169.254/"), sim)
        response = await client.response()
        assert response.status == 302
        assert response.header("Location") == "http://169.254.169.254/"


@with_sim()
async def test_byte_by_byte(sim: OllamaSimulator) -> None:
    async with connect(sim) as client:
        await start_stream(client, Fault(byte_by_byte=True), sim, tokens=["é", "😀"])
        response = await client.response()
    assert response.finished and all(len(c) == 1 for c in response.chunks)
    assert len(response.chunks) == len(response.body)
    assert [orjson.loads(line)["message"]["content"] for line in response.lines] == ["é", "😀", ""]
    # Multi-byte characters really are split across chunks.
    assert b"\xf0" in response.chunks
    assert sim.streams[0].writes >= len(response.body) + 1


@with_sim()
async def test_coalesce_and_split_writes(sim: OllamaSimulator) -> None:
    async with connect(sim) as client:
        await start_stream(client, Fault(coalesce=3), sim)
        response = await client.response()
        assert [c.count(b"\n") for c in response.chunks] == [3, 2]
        await start_stream(client, Fault(split_writes=4, seed=7), sim)
        response = await client.response()
        assert [c.count(b"\n") for c in response.chunks] == [1] * 5
    # Every chunk write (head + first, three more, done, last chunk) was cut in 4 pieces.
    assert sim.streams[1].writes == 4 * 6


@with_sim()
async def test_giant_line(sim: OllamaSimulator) -> None:
    size = 300_000
    async with connect(sim) as client:
        await start_stream(client, Fault(giant_line=size), sim)
        await client.head()
        line = await client.chunk()
        assert line is not None and len(line) == size and b"\n" not in line
        assert line.startswith(b'{"model":"qwen3:32b","created_at":"')
        assert await client.quiet()


@with_sim()
async def test_garbage(sim: OllamaSimulator) -> None:
    async with connect(sim) as client:
        await start_stream(client, Fault(garbage=True), sim)
        assert await client.reader.read() == b"SSH-2.0-OpenSSH_9.6\r\n"


@with_sim()
async def test_short_body(sim: OllamaSimulator) -> None:
    async with connect(sim) as client:
        await start_stream(client, Fault(short_body=True), sim)
        response = await client.response()
        assert response.header("Transfer-Encoding") is None
        assert not response.finished
        assert int(response.header("Content-Length") or 0) > len(response.body) > 0


@with_sim()
async def test_first_delay_and_slow_headers(sim: OllamaSimulator) -> None:
    loop = asyncio.get_running_loop()
    async with connect(sim) as client:
        sent_at = loop.time()
        await start_stream(client, Fault(first_delay=0.05, slow_headers=0.0), sim)
        response = await client.response()
        assert loop.time() - sent_at >= 0.05
        assert response.finished
    # Each head byte was its own write, then one write per chunk.
    assert sim.streams[0].writes == len(response.head) + len(response.chunks) + 1


@with_sim(default_fault=Fault(close_idle_after=0.05))
async def test_close_idle_after(sim: OllamaSimulator) -> None:
    async with connect(sim) as client:
        client.send("GET", "/api/version")
        assert (await client.response()).status == 200
        assert await client.eof()


@with_sim()
async def test_drop_idle_connections(sim: OllamaSimulator) -> None:
    async with connect(sim) as idle, connect(sim) as busy:
        idle.send("GET", "/api/version")
        await idle.response()
        await start_stream(busy, Fault(stall_after=1), sim)
        await sim.wait_for(lambda: sim.active_streams == 1)
        assert sim.drop_idle_connections() == 1
        assert await idle.eof()
        assert sim.streams[0].active


@with_sim()
async def test_fault_from_header(sim: OllamaSimulator) -> None:
    async with connect(sim) as client:
        client.send("POST", "/api/chat", chat(), X_Sim_Fault="error_line_after=0")
        response = await client.response()
        assert response.chunks == [ERROR_LINE]
        client.send("POST", "/api/chat", chat(), X_Sim_Fault="explode")
        assert (await client.response()).status == 400


@with_sim()
async def test_flood_respects_flow_control(sim: OllamaSimulator) -> None:
    async with connect(sim) as client:
        await start_stream(client, Fault(flood=True), sim)
        record = await _stream_record(sim)
        await sim.wait_for(lambda: record.write_pauses >= 1, IO_TIMEOUT)
        stalled_at = record.bytes_written
        # Bounded by socket buffers plus the transport's high-water mark, not by the flood.
        assert stalled_at < 32 * 1024 * 1024
        await client.reader.readexactly(4 * 1024 * 1024)
        await sim.wait_for(lambda: record.bytes_written > stalled_at, IO_TIMEOUT)
    assert await record.wait_ended(IO_TIMEOUT) == "client_closed"


async def _stream_record(sim: OllamaSimulator) -> Any:
    await sim.wait_for(lambda: len(sim.streams) > 0, IO_TIMEOUT)
    return sim.streams[-1]


# -- recording ---------------------------------------------------------------------------------


@with_sim(token_rate=1000.0)
async def test_recording_and_parallel_streams(sim: OllamaSimulator) -> None:
    async with connect(sim) as a, connect(sim) as b, connect(sim) as c:
        for client in (a, b, c):
            sim.next_reply(Reply(tokens=["x"], fault=Fault(stall_after=1)))
            client.send("POST", "/api/chat", chat("hello"), User_Agent="probe")
        await sim.wait_for(lambda: sim.active_streams == 3, IO_TIMEOUT)
        assert sim.max_active_streams == 3 and sim.open_connections == 3
    await sim.wait_for(lambda: sim.active_streams == 0 and sim.open_connections == 0, IO_TIMEOUT)
    assert sim.max_active_streams == 3
    request = sim.requests[0]
    assert (request.method, request.path) == ("POST", "/api/chat")
    assert request.header("user-agent") == "probe"
    assert request.json["messages"][0]["content"] == "hello"
    assert request.received_at <= sim.streams[0].started_at
    assert all(s.outcome == "client_closed" for s in sim.streams)
    sim.reset_records()
    assert (len(sim.requests), len(sim.streams), sim.max_active_streams) == (0, 0, 0)


@pytest.mark.parametrize("how", ["close", "abort"])
def test_client_leaving_ends_stream_quickly(run: Runner, how: str) -> None:
    async def main() -> None:
        async with OllamaSimulator(token_rate=20.0, script=numbered_script(1000)) as sim:
            loop = asyncio.get_running_loop()
            reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
            writer.write(request_bytes("POST", "/api/chat", chat()))
            client = Client(reader, writer)
            await client.head()
            assert b" t0001" in (await client.chunk() or b"")
            left_at = loop.time()
            if how == "abort":
                writer.transport.abort()
            await client.close()
            record = sim.streams[0]
            assert await record.wait_ended(IO_TIMEOUT) == "client_closed"
            assert record.ended_at is not None and record.ended_at - left_at < 1.0
            assert 1 <= record.tokens_sent < 1000

    run(main())


@with_sim(token_rate=200.0)
async def test_pacing(sim: OllamaSimulator) -> None:
    sim.next_reply(Reply(tokens=[" a"] * 10))
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await exchange(sim, "POST", "/api/chat", chat())
    elapsed = loop.time() - started
    # 10 tokens + done at 5 ms each; generous upper bound for a loaded CI box.
    assert 0.045 <= elapsed < 2.0
    assert len(response.chunks) == 11


def test_close_with_live_streams_marks_shutdown(run: Runner) -> None:
    async def main() -> None:
        sim = OllamaSimulator(token_rate=None, default_fault=Fault(stall_after=1))
        await sim.start()
        async with connect(sim) as client:
            client.send("POST", "/api/chat", chat())
            await sim.wait_for(lambda: sim.active_streams == 1, IO_TIMEOUT)
            await sim.close()
            assert sim.streams[0].outcome == "shutdown"
            assert sim.open_connections == 0
            # The socket is gone: reading drains what was sent and then ends.
            with contextlib.suppress(ConnectionResetError):
                await client.reader.read()

    run(main())


def test_command_line_runs_and_stops_on_sigint() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "clawproxy.simulator", "--port", "0", "--numbered", "--uvloop"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.fullmatch(r"ollama simulator listening on http://127\.0\.0\.1:(\d+)\n", line)
        assert match, line
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
