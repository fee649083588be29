"""Test harness: the Ollama simulator and a real gateway on one event loop in a thread.

Tests drive the gateway from the main thread with real clients (the ``openai`` package,
``http.client``, raw sockets) over loopback, exactly as users do. State on the loop thread
is read through ``call()``, so a test never races the loop it inspects.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import signal
import socket
import subprocess
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

from clawproxy.config import config_from_mapping
from clawproxy.gateway import Gateway
from clawproxy.simulator import OllamaSimulator

if TYPE_CHECKING:
    import openai

T = TypeVar("T")

# The ``run`` fixture (conftest): runs a coroutine to its end on a fresh loop of each kind.
Runner = Callable[[Coroutine[Any, Any, None]], None]

# Seconds a test waits for the loop thread to do something; generous for a loaded CI box.
CALL_TIMEOUT = 20.0


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class Harness:
    """A simulator plus a gateway configured from ``settings`` (dotted keys)."""

    def __init__(
        self,
        settings: Mapping[str, object] | None = None,
        *,
        loop_kind: str = "uvloop",
        sim_options: Mapping[str, Any] | None = None,
        start_simulator: bool = True,
    ) -> None:
        self.settings = dict(settings or {})
        self.loop = new_loop(loop_kind)
        self.sim_options = {"token_rate": None, **(sim_options or {})}
        self.start_simulator = start_simulator
        self.sim: OllamaSimulator
        self.gateway: Gateway
        self.port = 0
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._clients: list[Any] = []

    def __enter__(self) -> Harness:
        self._thread.start()
        self.call(self._start)
        return self

    def openai_client(self) -> Any:
        """One ``openai.OpenAI`` client per harness, closed with it (no leaked sockets)."""
        if not self._clients:
            import openai

            self._clients.append(
                openai.OpenAI(
                    base_url=self.base_url + "/v1", api_key="unused", max_retries=0, timeout=20
                )
            )
        return self._clients[0]

    def close_clients(self) -> None:
        """Close the shared openai client (and so its idle keep-alive connection)."""
        for openai_client in self._clients:
            openai_client.close()
        self._clients.clear()

    def __exit__(self, *exc: object) -> None:
        self.close_clients()
        stopped = False
        try:
            self.call(self._stop)
            stopped = True
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(CALL_TIMEOUT)
            # After a failed stop, uvloop's close can wait forever on what the stop left
            # open (a test that hangs instead of failing): the failure is the report.
            if stopped and not self._thread.is_alive():
                self.loop.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, fn: Callable[[], Awaitable[T]], timeout: float = CALL_TIMEOUT) -> T:
        """Run ``fn()`` on the loop thread and return its result."""

        async def runner() -> T:
            return await fn()

        fut: Future[T] = asyncio.run_coroutine_threadsafe(runner(), self.loop)
        return fut.result(timeout)

    def read(self, fn: Callable[[], T]) -> T:
        """Evaluate ``fn()`` on the loop thread (for reading live state)."""

        async def reader() -> T:
            return fn()

        return self.call(reader)

    async def _start(self) -> None:
        self.sim = OllamaSimulator(**self.sim_options)
        if self.start_simulator:
            await self.sim.start()
            endpoint = self.sim.endpoint
        else:
            endpoint = "http://127.0.0.1:9"  # discard port: nothing listens there
        data: dict[str, object] = {
            "server.host": "127.0.0.1",
            "server.port": 0,
            "gateway.debug_port": 0,
            "model.endpoint": endpoint,
            **self.settings,
        }
        config = config_from_mapping({}, overrides=data)
        self.gateway = Gateway(config)
        self.port = await self.gateway.start()

    async def _stop(self) -> None:
        await self.gateway.stop(drain_timeout=1.0)
        if self.start_simulator:
            await self.sim.close()
        # Let transports finish closing so no ResourceWarning escapes.
        await asyncio.sleep(0)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll state on the loop (1 ms steps) until ``predicate()`` holds."""
        deadline = self.loop.time() + timeout
        while not predicate():
            if self.loop.time() > deadline:
                return False
            await asyncio.sleep(0.001)
        return True

    def settled(self, timeout: float = 5.0) -> bool:
        """True once no request is active or queued in the gateway."""
        adm = self.gateway.state.admission
        return self.call(
            lambda: self.wait_until(lambda: adm.active == 0 and adm.waiting == 0, timeout)
        )


class NodesHarness(Harness):
    """Several simulators, one per entry of ``nodes`` (simulator options plus the node's
    config keys under ``"node"``), and a gateway with a ``nodes:`` list naming them
    ``n0``, ``n1``... ``self.sims`` holds them in that order."""

    def __init__(
        self,
        nodes: list[Mapping[str, Any]],
        settings: Mapping[str, object] | None = None,
        *,
        loop_kind: str = "uvloop",
    ) -> None:
        super().__init__(settings, loop_kind=loop_kind)
        self.node_entries = [dict(entry) for entry in nodes]
        self.sims: list[OllamaSimulator] = []

    async def _start(self) -> None:
        specs: list[dict[str, object]] = []
        for index, entry in enumerate(self.node_entries):
            options = {k: v for k, v in entry.items() if k != "node"}
            sim = OllamaSimulator(**{"token_rate": None, **options})
            await sim.start()
            self.sims.append(sim)
            specs.append({"name": f"n{index}", "url": sim.endpoint, **entry.get("node", {})})
        self.sim = self.sims[0]
        data: dict[str, object] = {
            "server.host": "127.0.0.1",
            "server.port": 0,
            "gateway.debug_port": 0,
            "nodes": specs,
            **self.settings,
        }
        self.gateway = Gateway(config_from_mapping({}, overrides=data))
        self.port = await self.gateway.start()

    async def _stop(self) -> None:
        await self.gateway.stop(drain_timeout=1.0)
        for sim in self.sims:
            await sim.close()
        await asyncio.sleep(0)

    def node(self, name: str) -> Any:
        """The gateway's live ``Node`` (read its fields through ``read``)."""
        return self.gateway.nodes.get(name)


def post_json(
    h: Harness, path: str, body: object, headers: Mapping[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request with ``http.client``; returns status, headers (lower-case) and body."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return request(h, "POST", path, data, {"Content-Type": "application/json", **(headers or {})})


def request(
    h: Harness,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=CALL_TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def admin_call(h: Harness, method: str, path: str, body: object | None = None) -> tuple[int, Any]:
    """One request to the admin port; returns the status and the parsed JSON body."""
    conn = http.client.HTTPConnection("127.0.0.1", h.gateway.admin_port, timeout=CALL_TIMEOUT)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {} if data is None else {"Content-Type": "application/json"}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything a raw socket receives until the server closes (or resets) it."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


@contextlib.contextmanager
def offline_gateway(
    overrides: Mapping[str, object] | None = None,
) -> Iterator[tuple[asyncio.AbstractEventLoop, Gateway]]:
    """A gateway object on a private loop, never started and with no Ollama behind it:
    for driving ``HttpConnection`` directly over fake transports."""
    loop = asyncio.new_event_loop()
    config = config_from_mapping(
        {}, overrides={"model.endpoint": "http://127.0.0.1:9", **(overrides or {})}
    )

    async def make() -> Gateway:
        return Gateway(config)

    gw = loop.run_until_complete(make())
    try:
        yield loop, gw
    finally:
        loop.run_until_complete(gw.stop(drain_timeout=0))
        loop.close()


# --- helpers shared by the end-to-end tests ------------------------------------------------

# A minimal chat request body, and the same body asking for a stream.
HELLO = {"messages": [{"role": "user", "content": "hi"}]}
STREAM_REQUEST = json.dumps({**HELLO, "stream": True}).encode()


def client(h: Harness) -> openai.OpenAI:
    result: openai.OpenAI = h.openai_client()
    return result


def ask(h: Harness, **kwargs: Any) -> Any:
    params: dict[str, Any] = {"model": "qwen3:32b", "messages": [{"role": "user", "content": "hi"}]}
    params.update(kwargs)
    return client(h).chat.completions.create(**params)


def content_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def error_of(body: bytes) -> dict[str, Any]:
    parsed = json.loads(body)
    assert set(parsed) == {"error"}
    err: dict[str, Any] = parsed["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    return err


def open_stream(h: Harness, rcvbuf: int | None = None) -> socket.socket:
    """Send a streaming chat request on a raw socket and return the socket unread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        # Before connect, so the kernel cannot auto-tune it back up (RELIABILITY 1.4).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", h.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
        % (len(STREAM_REQUEST), STREAM_REQUEST)
    )
    return sock


# --- raw sockets and fake transports ---------------------------------------------------------


def connect(h: Harness) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", h.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def trickle(sock: socket.socket, piece: bytes, between: Callable[[], None] = lambda: None) -> bytes:
    """Send ``piece`` every 50 ms until the server answers and closes; return the answer.
    ``between`` runs at each pause (a check that must hold while the client trickles)."""
    sock.settimeout(0.05)
    data = b""
    for _ in range(200):
        try:
            sock.sendall(piece)
            chunk = sock.recv(4096)
        except TimeoutError:
            between()
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
    return data


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


class FakeTransport:
    """Records writes; enough of asyncio.Transport for HttpConnection."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.paused = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


def stop_process(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM a gateway started as a subprocess; its exit status (killed after 30 s)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


Response = tuple[int, dict[str, str], bytes]


def raw(
    h: Harness,
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    *,
    host: str | None = None,
) -> Response:
    """One request written byte for byte, as a browser would send it; the connection closes
    after it. ``host``: the Host header (default: the address connected to)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host or f'127.0.0.1:{h.port}'}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    with socket.create_connection(("127.0.0.1", h.port), timeout=CALL_TIMEOUT) as sock:
        sock.sendall(head + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    status_line, *fields = head_bytes.decode("latin-1").split("\r\n")
    parsed: dict[str, str] = {}
    for field in fields:
        name, _, value = field.partition(":")
        name = name.strip().lower()
        # Repeated fields joined as a list would be, so a duplicate shows.
        parsed[name] = f"{parsed[name]}, {value.strip()}" if name in parsed else value.strip()
    return int(status_line.split(" ", 2)[1]), parsed, rest


def read_to_last_chunk(sock: socket.socket) -> bytes:
    """A chunked response, head and all, up to its last chunk. The end is looked for after
    the head: a head can end in "0\r\n\r\n" too (an x-request-id ending in 0)."""
    data = b""
    while not data.partition(b"\r\n\r\n")[2].endswith(b"0\r\n\r\n"):
        chunk = sock.recv(65536)
        assert chunk, "closed before the last chunk"
        data += chunk
    return data
