"""The simulator as one node of a pool: concurrency caps, per-node models, faults, HTTPS, CLI.

Every socket test runs on stock asyncio and on uvloop, against a real simulator on
loopback, through a deliberately small client (raw request bytes, a head, a body). Slow
generations are made with the ``stall_after`` fault: one token, then silence until the
client leaves, so "running" is a state a test holds for as long as it wants, with no
sleeps. Waits go through ``sim.wait_for`` (woken by the gate's changes), bounded by
``IO_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import re
import selectors
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from harness import Runner
from hypothesis import given
from hypothesis import strategies as st
from tls_certs import server_context, session_certs

from clawproxy.simulator import DEFAULT_MODELS, Fault, OllamaSimulator
from clawproxy.simulator.__main__ import main as cli_main
from clawproxy.simulator.catalog import installed_models, invented_model
from clawproxy.simulator.gate import BUSY_MESSAGE, GenerationGate, SlotState, Verdict, admit

IO_TIMEOUT = 5.0
# How long "no answer yet" is watched for a queued request; the positive case is instant.
QUIET_WINDOW = 0.1
# Seconds to wait for the CLI's lines and exit (process start-up is the slow part).
CLI_TIMEOUT = 20.0
BUSY_BODY = b'{"error":"server busy, please try again.  maximum pending requests exceeded"}'
STALL = "stall_after=1"
ERROR_LINE = b'{"error":"an error was encountered while running the model"}'


# -- a small client -------------------------------------------------------------------------


class Client:
    """One connection: send a request, read a head, read a body."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def send(self, method: str, path: str, body: Any = None, **headers: str) -> None:
        data = b"" if body is None else orjson.dumps(body)
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
        lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
        if method == "POST":
            lines.append(f"Content-Length: {len(data)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)

    async def head(self) -> tuple[int, dict[str, str]]:
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *fields = raw.decode("latin-1").split("\r\n")[:-2]
        headers = {}
        for field in fields:
            name, _, value = field.partition(": ")
            headers[name.lower()] = value
        return int(status_line.split(" ", 2)[1]), headers

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        """A whole response; a chunked body is returned de-chunked."""
        status, headers = await self.head()
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int((await self.reader.readuntil(b"\r\n"))[:-2], 16):
                body += (await self.reader.readexactly(size + 2))[:-2]
            await self.reader.readexactly(2)
            return status, headers, body
        length = int(headers.get("content-length", "0"))
        return status, headers, await self.reader.readexactly(length)

    async def quiet(self) -> bool:
        """True if nothing arrives for QUIET_WINDOW (the request is still waiting)."""
        try:
            async with asyncio.timeout(QUIET_WINDOW):
                data = await self.reader.read(1)
        except TimeoutError:
            return True
        assert data == b"", f"unexpected bytes {data!r}"
        return False

    def abort(self) -> None:
        """Drop the connection at once (RST), as a client that gives up does."""
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def connect(
    sim: OllamaSimulator, context: ssl.SSLContext | None = None
) -> AsyncIterator[Client]:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", sim.port, ssl=context, server_hostname="127.0.0.1" if context else None
    )
    client = Client(reader, writer)
    try:
        async with asyncio.timeout(IO_TIMEOUT):
            yield client
    finally:
        await client.close()


def chat(content: str = "Hi", model: str = "qwen3:32b") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}]}


async def exchange(
    sim: OllamaSimulator, method: str, path: str, body: Any = None
) -> tuple[int, dict[str, str], bytes]:
    async with connect(sim) as client:
        client.send(method, path, body)
        return await client.response()


@contextlib.asynccontextmanager
async def stalled_streams(sim: OllamaSimulator, count: int) -> AsyncIterator[list[Client]]:
    """``count`` generations running (each sent its head and one token, then stalls)."""
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(connect(sim)) for _ in range(count)]
        for index, client in enumerate(clients):
            client.send("POST", "/api/chat", chat(f"stall {index}"), x_sim_fault=STALL)
        for client in clients:
            assert (await client.head())[0] == 200
        yield clients


# -- the gate, without a loop -----------------------------------------------------------------


def test_admit_decides_run_wait_refuse() -> None:
    assert admit(0, 0, None, 0) is Verdict.RUN
    assert admit(10_000, 0, None, 0) is Verdict.RUN
    assert admit(1, 0, 2, 0) is Verdict.RUN
    assert admit(2, 0, 2, 0) is Verdict.REFUSE
    assert admit(2, 0, 2, 1) is Verdict.WAIT
    assert admit(2, 1, 2, 1) is Verdict.REFUSE
    # A free place is not taken past someone already waiting (they are woken first).
    assert admit(1, 1, 2, 5) is Verdict.WAIT


@given(
    num_parallel=st.integers(1, 4),
    max_queue=st.integers(0, 4),
    steps=st.lists(st.tuples(st.booleans(), st.integers(0, 50)), max_size=60),
)
def test_gate_never_exceeds_its_cap_and_serves_in_order(
    num_parallel: int, max_queue: int, steps: list[tuple[bool, int]]
) -> None:
    """Random arrivals and departures (of running or waiting slots): the counts always match
    a model of the queue, ``peak`` is the true maximum, and waiters start in FIFO order."""
    changes = []
    gate = GenerationGate(num_parallel, max_queue, lambda: changes.append(None))
    running: list[int] = []
    waiting: list[int] = []
    slots = {}
    refused = peak = 0
    for number, (arrive, pick) in enumerate(steps):
        if arrive or not slots:
            slot = gate.enter()
            if slot is None:
                assert len(running) == num_parallel and len(waiting) == max_queue
                refused += 1
                continue
            slots[number] = slot
            (running if slot.state is SlotState.RUNNING else waiting).append(number)
        else:
            gone = sorted(slots)[pick % len(slots)]
            slots.pop(gone).release()
            if gone in running:
                running.remove(gone)
                while waiting and len(running) < num_parallel:
                    running.append(waiting.pop(0))
            else:
                waiting.remove(gone)
        peak = max(peak, len(running))
        assert [n for n in slots if slots[n].state is SlotState.RUNNING] == sorted(running)
        assert (gate.active, gate.waiting, gate.peak) == (len(running), len(waiting), peak)
        assert gate.rejections == refused
    for slot in slots.values():
        slot.release()
        slot.release()  # idempotent
    assert (gate.active, gate.waiting) == (0, 0)


def test_installed_models_by_name() -> None:
    qwen = DEFAULT_MODELS[0]
    catalog = installed_models(["Qwen3:32B", "only-on-b", "only-on-b:latest", "lab/x:7b"])
    assert [model.name for model in catalog] == ["qwen3:32b", "only-on-b:latest", "lab/x:7b"]
    assert catalog[0] is qwen
    assert catalog[1] == invented_model("only-on-b")  # the same name, the same entry
    assert catalog[1].capabilities == ("completion", "tools")
    assert catalog[1].size > 0 and catalog[1].parameter_size.endswith("B")
    with pytest.raises(ValueError, match="empty"):
        installed_models([" "])


# -- num_parallel and max_queue over HTTP -------------------------------------------------


def test_full_node_answers_ollamas_exact_503(run: Runner) -> None:
    async def main() -> None:
        async with OllamaSimulator(token_rate=None, num_parallel=2) as sim:
            async with stalled_streams(sim, 2):
                assert sim.active_generations == 2
                for path, body in (
                    ("/api/chat", chat()),
                    ("/api/generate", {"model": "qwen3:32b", "prompt": "hi"}),
                    ("/api/embed", {"model": "qwen3:32b", "input": "hi"}),
                ):
                    status, headers, raw = await exchange(sim, "POST", path, body)
                    assert (status, raw) == (503, BUSY_BODY)
                    assert headers["content-type"] == "application/json; charset=utf-8"
                    assert headers["content-length"] == str(len(BUSY_BODY))
                assert orjson.loads(BUSY_BODY)["error"] == BUSY_MESSAGE
                assert sim.busy_rejections == 3
                # Validation comes first, as in Ollama: an unknown model is still a 404.
                status, _, _ = await exchange(sim, "POST", "/api/chat", chat(model="nope"))
                assert status == 404
                # Loads and plain endpoints take no place.
                load = {"model": "qwen3:32b", "messages": []}
                assert (await exchange(sim, "POST", "/api/chat", load))[0] == 200
                assert (await exchange(sim, "GET", "/api/ps"))[0] == 200
                assert sim.busy_rejections == 3
            await sim.wait_for(lambda: sim.active_generations == 0, IO_TIMEOUT)
            # Places free again: the next generation runs.
            status, _, body = await exchange(sim, "POST", "/api/chat", chat())
            assert status == 200 and b'"done":true' in body
            assert sim.peak_generations == 2

    run(main())


def test_queue_places_are_fifo_then_503(run: Runner) -> None:
    async def main() -> None:
        async with OllamaSimulator(token_rate=None, num_parallel=1, max_queue=2) as sim:
            async with stalled_streams(sim, 1) as (first,), connect(sim) as a, connect(sim) as b:
                a.send("POST", "/api/chat", chat("queued a"))
                await sim.wait_for(lambda: sim.gate.waiting == 1, IO_TIMEOUT)
                b.send("POST", "/api/chat", chat("queued b"))
                await sim.wait_for(lambda: sim.gate.waiting == 2, IO_TIMEOUT)
                assert await a.quiet() and await b.quiet()
                status, _, raw = await exchange(sim, "POST", "/api/chat", chat("too many"))
                assert (status, raw) == (503, BUSY_BODY)
                assert sim.busy_rejections == 1
                first.abort()
                # The oldest waiter runs; the other still waits.
                status, _, body = await a.response()
                assert status == 200 and b'"done":true' in body
                assert (await b.response())[0] == 200
            contents = [s.request.json["messages"][0]["content"] for s in sim.streams]
            assert contents == ["stall 0", "queued a", "queued b"]
            assert sim.peak_generations == 1
            assert [s.outcome for s in sim.streams] == ["client_closed", "complete", "complete"]

    run(main())


def test_waiter_that_leaves_gives_its_queue_place_back(run: Runner) -> None:
    async def main() -> None:
        async with OllamaSimulator(token_rate=None, num_parallel=1, max_queue=1) as sim:
            async with stalled_streams(sim, 1) as (first,):
                async with connect(sim) as waiter:
                    waiter.send("POST", "/api/chat", chat("leaves"))
                    await sim.wait_for(lambda: sim.gate.waiting == 1, IO_TIMEOUT)
                    waiter.abort()
                await sim.wait_for(lambda: sim.gate.waiting == 0, IO_TIMEOUT)
                async with connect(sim) as second:
                    second.send("POST", "/api/chat", chat("stays"))
                    await sim.wait_for(lambda: sim.gate.waiting == 1, IO_TIMEOUT)
                    first.abort()
                    assert (await second.response())[0] == 200
            assert sim.busy_rejections == 0
            assert [s.request.json["messages"][0]["content"] for s in sim.streams] == [
                "stall 0",
                "stays",
            ]

    run(main())


def test_peak_is_exact_with_aborted_streams(run: Runner) -> None:
    """No cap: peak counts exactly the generations that overlapped; an aborted stream stops
    counting when its connection goes, not when its handler happens to unwind."""

    async def main() -> None:
        async with OllamaSimulator(token_rate=None) as sim:
            async with stalled_streams(sim, 4) as clients:
                assert (sim.active_generations, sim.peak_generations) == (4, 4)
                clients[0].abort()
                clients[1].abort()
                await sim.wait_for(lambda: sim.active_generations == 2, IO_TIMEOUT)
                async with stalled_streams(sim, 2):
                    assert (sim.active_generations, sim.peak_generations) == (4, 4)
                    sim.reset_peak()
                    assert sim.peak_generations == 4
            await sim.wait_for(lambda: sim.active_generations == 0, IO_TIMEOUT)
            sim.reset_peak()
            assert sim.peak_generations == 0
            assert [s.outcome for s in sim.streams] == ["client_closed"] * 6

    run(main())


def test_peak_never_passes_the_cap_under_concurrent_aborts(run: Runner) -> None:
    """Twenty clients race for three places; each aborts once its stream has started. Every
    one is served in turn, none refused, and the peak is exactly the cap."""
    clients_count, cap = 20, 3

    async def one(sim: OllamaSimulator, index: int) -> None:
        async with connect(sim) as client:
            client.send("POST", "/api/chat", chat(f"c{index}"), x_sim_fault=STALL)
            assert (await client.head())[0] == 200
            assert sim.active_generations <= cap
            client.abort()

    async def main() -> None:
        sim = OllamaSimulator(token_rate=None, num_parallel=cap, max_queue=clients_count)
        async with sim:
            await asyncio.gather(*(one(sim, index) for index in range(clients_count)))
            await sim.wait_for(lambda: sim.active_generations == 0, IO_TIMEOUT)
            assert sim.peak_generations == cap
            assert sim.busy_rejections == 0
            assert len(sim.streams) == clients_count
            assert {s.outcome for s in sim.streams} == {"client_closed"}

    run(main())


# -- per-node models and faults --------------------------------------------------------------


def test_models_restrict_what_a_node_has(run: Runner) -> None:
    async def main() -> None:
        async with OllamaSimulator(token_rate=None, models=["qwen3:32b", "only-on-b"]) as sim:
            status, _, body = await exchange(sim, "GET", "/api/tags")
            names = [m["name"] for m in orjson.loads(body)["models"]]
            assert (status, names) == (200, ["qwen3:32b", "only-on-b:latest"])
            for path, request in (
                ("/api/chat", chat(model="llama3.2")),
                ("/api/generate", {"model": "llama3.2", "prompt": "hi"}),
                ("/api/embed", {"model": "llama3.2", "input": "hi"}),
                ("/api/show", {"model": "llama3.2"}),
            ):
                status, _, body = await exchange(sim, "POST", path, request)
                assert (status, body) == (404, b'{"error":"model \'llama3.2\' not found"}')
            status, _, body = await exchange(sim, "POST", "/api/chat", chat(model="only-on-b"))
            assert status == 200 and b'"done":true' in body
            status, _, body = await exchange(sim, "POST", "/api/show", {"model": "only-on-b"})
            assert status == 200 and orjson.loads(body)["capabilities"] == ["completion", "tools"]
            status, _, body = await exchange(sim, "GET", "/api/ps")
            assert [m["name"] for m in orjson.loads(body)["models"]] == ["only-on-b:latest"]

    run(main())


def test_two_nodes_with_different_faults_are_independent(run: Runner) -> None:
    async def main() -> None:
        broken = OllamaSimulator(token_rate=None, default_fault=Fault(error_line_after=1))
        healthy = OllamaSimulator(token_rate=None)
        async with broken, healthy:
            status, _, body = await exchange(broken, "POST", "/api/chat", chat())
            assert status == 200 and b'"done":true' not in body
            assert body.splitlines()[-1] == ERROR_LINE
            status, _, body = await exchange(healthy, "POST", "/api/chat", chat())
            assert status == 200 and b'"done":true' in body
            # Faults switch per node at run time, the other node unaffected.
            broken.default_fault = None
            healthy.default_fault = Fault(status=500, body=b'{"error":"boom"}')
            assert (await exchange(broken, "POST", "/api/chat", chat()))[0] == 200
            assert (await exchange(healthy, "POST", "/api/chat", chat()))[2] == b'{"error":"boom"}'
            assert [s.outcome for s in broken.streams] == ["fault", "complete"]
            assert [s.outcome for s in healthy.streams] == ["complete", "fault"]

    run(main())


# -- HTTPS ------------------------------------------------------------------------------------


def test_simulator_serves_https(run: Runner) -> None:
    certs = session_certs()
    client_ctx = ssl.create_default_context(cafile=certs.ca_file)

    async def main() -> None:
        sim = OllamaSimulator(token_rate=None, ssl_context=server_context(certs), num_parallel=1)
        async with sim:
            assert sim.endpoint == f"https://127.0.0.1:{sim.port}"
            async with connect(sim, client_ctx) as client:
                client.send("GET", "/api/version")
                status, _, body = await client.response()
                assert status == 200 and body.startswith(b'{"version":')
                # Keep-alive over TLS: a streamed generation on the same connection.
                client.send("POST", "/api/chat", chat())
                status, _, body = await client.response()
                assert status == 200 and b'"done":true' in body
            assert sim.connections_total == 1

    run(main())


# -- the command line -------------------------------------------------------------------------

LINE = re.compile(r"ollama simulator listening on (https?)://127\.0\.0\.1:(\d+)\n")


def read_lines(process: subprocess.Popen[str], count: int) -> list[str]:
    """``count`` lines of the child's stdout, each within CLI_TIMEOUT (never a hang).

    Read from the file descriptor, not the text wrapper: its buffer could hold a line
    that ``select`` can no longer see.
    """
    assert process.stdout is not None
    fd = process.stdout.fileno()
    data = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while data.count(b"\n") < count:
            assert selector.select(CLI_TIMEOUT), f"no line from the simulator after {data!r}"
            piece = os.read(fd, 4096)
            assert piece, f"the simulator exited after {data!r}"
            data += piece
    return [line + "\n" for line in data.decode().split("\n")[:count]]


@contextlib.contextmanager
def simulator_process(*flags: str) -> Any:
    process = subprocess.Popen(
        [sys.executable, "-m", "clawproxy.simulator", "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def get_json(port: int, path: str, context: ssl.SSLContext | None = None) -> Any:
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=IO_TIMEOUT, context=context)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200
        return orjson.loads(response.read())
    finally:
        conn.close()


def test_command_line_starts_several_nodes() -> None:
    flags = ("--nodes", "2", "--node-models", "qwen3:32b,only-on-a;only-on-b", "--uvloop")
    with simulator_process(*flags) as process:
        lines = read_lines(process, 2)
        matches = [LINE.fullmatch(line) for line in lines]
        assert all(matches), lines
        ports = [int(match[2]) for match in matches if match]
        assert len(set(ports)) == 2
        for port in ports:
            assert get_json(port, "/api/version")["version"]
        tags = [[m["name"] for m in get_json(port, "/api/tags")["models"]] for port in ports]
        assert tags == [["qwen3:32b", "only-on-a:latest"], ["only-on-b:latest"]]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=CLI_TIMEOUT) == 0


def test_command_line_serves_https() -> None:
    certs = session_certs()
    flags = ("--tls-cert", certs.server_cert, "--tls-key", certs.server_key, "--models", "m1")
    with simulator_process(*flags, "--num-parallel", "2", "--max-queue", "1") as process:
        (line,) = read_lines(process, 1)
        match = LINE.fullmatch(line)
        assert match and match[1] == "https", line
        context = ssl.create_default_context(cafile=certs.ca_file)
        assert get_json(int(match[2]), "/api/version", context)["version"]
        assert [m["name"] for m in get_json(int(match[2]), "/api/tags", context)["models"]] == [
            "m1:latest"
        ]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=CLI_TIMEOUT) == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--nodes", "0"], "--nodes must be at least 1"),
        (["--num-parallel", "0"], "--num-parallel must be at least 1"),
        (["--max-queue", "-1"], "--max-queue must not be negative"),
        (["--nodes", "2", "--node-models", "a"], "names 1 node(s) but --nodes is 2"),
        (["--tls-cert", "x.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], "cannot load"),
    ],
)
def test_command_line_refuses_bad_flags(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["--port", "0", *flags]) == 2
    assert message in capsys.readouterr().err
