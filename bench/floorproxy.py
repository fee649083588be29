"""The least a Python proxy can do per request: ``python -m bench.floorproxy --upstream P``.

Theory of operation: a stand-in for "any asyncio proxy on this machine", used only by
``bench/floor.py`` to split the gateway's added time to first token into what every
Python proxy pays and what the gateway's own work adds. Same loop (uvloop), same kind of
protocols and the same keep-alive pool to the simulator as the gateway, and nothing
else: no JSON, no re-framing, no admission, no timers, no logging, no task per request.
The client's request body goes upstream unchanged and the simulator's chunked NDJSON
comes back unchanged behind a fixed head (as nginx relays it), so the load generator
reads it in the ``ndjson`` format.

Heads are found one of two ways (``--heads``):

* ``scan``: the end of the head is searched for and Content-Length read by hand; the
  floor of a proxy that parses nothing.
* ``h11``: h11 parses the request head (a fresh ``h11.Connection`` per client
  connection) and Ollama's response head (a client connection told about the request
  when it goes idle), exactly the h11 work the gateway does per request.

It is not a product: it trusts the simulator (a body ends with a read that ends in the
last chunk), serves one request per client connection (the load generator closes), and
has no error handling beyond closing. Like the gateway's pool and nginx's upstream
keep-alive, it keeps up to 8 idle connections to the simulator and opens more while
more requests run at once (``python -m bench --paths ...,floor-h11`` runs it under the
bench's streaming loads).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from typing import cast

import h11

LAST_CHUNK = b"0\r\n\r\n"
HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
    b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
)
POOL_SIZE = 8


class Upstream(asyncio.Protocol):
    """One keep-alive connection to the simulator."""

    def __init__(self, proxy: FloorProxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.client: Client | None = None
        self.in_body = False
        self.parser: h11.Connection | None = None
        self._prime()

    def _prime(self) -> None:
        if self.proxy.use_h11:
            self.parser = h11.Connection(h11.CLIENT)
            self.parser.send(self.proxy.stand_in)
            self.parser.send(h11.EndOfMessage())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self, client: Client, body: bytes) -> None:
        self.client = client
        assert self.transport is not None
        self.transport.write(self.proxy.request_head % len(body) + body)

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            return
        if self.in_body:
            client.write(data)
        else:
            rest = self._head_rest(data)
            if rest is None:
                return
            self.in_body = True
            client.write(HEAD + rest)
        if data.endswith(LAST_CHUNK):
            self.in_body = False
            self.client = None
            client.close()
            self._prime()
            self.proxy.put_idle(self)

    def _head_rest(self, data: bytes) -> bytes | None:
        """The bytes after the response head, or None while the head is incomplete."""
        parser = self.parser
        if parser is None:
            end = data.find(b"\r\n\r\n")
            return None if end < 0 else data[end + 4 :]
        parser.receive_data(data)
        if type(parser.next_event()) is not h11.Response:
            return None
        return bytes(parser.trailing_data[0])


class Client(asyncio.Protocol):
    """One client connection carrying one request."""

    def __init__(self, proxy: FloorProxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.parser = h11.Connection(h11.SERVER) if proxy.use_h11 else None
        self.buffer = b""
        self.length: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        body = self._body(data)
        if body is not None:
            self.proxy.forward(self, body)

    def _body(self, data: bytes) -> bytes | None:
        """The request body once the whole request is in, else None."""
        if self.length is not None:
            self.buffer += data
        elif self.parser is None:
            self.buffer += data
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return None
            head = self.buffer[:end].lower()
            at = head.find(b"content-length:") + len(b"content-length:")
            stop = head.find(b"\r\n", at)
            self.length = int(head[at : stop if stop >= 0 else None])
            self.buffer = self.buffer[end + 4 :]
        else:
            self.parser.receive_data(data)
            event = self.parser.next_event()
            if type(event) is not h11.Request:
                return None
            fields = event.headers.raw_items()
            self.length = next(int(v) for k, v in fields if k.lower() == b"content-length")
            self.buffer = bytes(self.parser.trailing_data[0])
        return self.buffer if len(self.buffer) >= self.length else None

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class FloorProxy:
    def __init__(self, upstream_port: int, use_h11: bool) -> None:
        self.upstream_port = upstream_port
        self.use_h11 = use_h11
        self.idle: list[Upstream] = []
        host = f"127.0.0.1:{upstream_port}".encode()
        self.request_head = (
            b"POST /api/chat HTTP/1.1\r\nHost: " + host + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        )
        self.stand_in = h11.Request(
            method=b"POST",
            target=b"/api/chat",
            headers=[(b"Host", host), (b"Content-Length", b"0")],
        )

    def forward(self, client: Client, body: bytes) -> None:
        if self.idle:
            self.idle.pop().send(client, body)
            return
        # All busy: one more connection, as the gateway's pool and nginx open one.
        asyncio.get_running_loop().create_task(self._send_on_new(client, body))

    async def _send_on_new(self, client: Client, body: bytes) -> None:
        (await self._connect()).send(client, body)

    def put_idle(self, up: Upstream) -> None:
        # As many idle connections as the gateway's pool and nginx's keepalive keep.
        if len(self.idle) < POOL_SIZE:
            self.idle.append(up)
        elif up.transport is not None:
            up.transport.close()

    async def _connect(self) -> Upstream:
        loop = asyncio.get_running_loop()
        _, up = await loop.create_connection(
            lambda: Upstream(self), "127.0.0.1", self.upstream_port
        )
        return up

    async def start(self, port: int) -> int:
        for _ in range(POOL_SIZE):
            self.idle.append(await self._connect())
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Client(self), "127.0.0.1", port)
        listening: int = server.sockets[0].getsockname()[1]
        return listening


async def serve(args: argparse.Namespace) -> None:
    proxy = FloorProxy(args.upstream, args.heads == "h11")
    port = await proxy.start(args.port)
    print(json.dumps({"port": port}), flush=True)
    await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floorproxy", description=__doc__)
    parser.add_argument("--upstream", type=int, required=True, help="the simulator's port")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--heads", choices=("scan", "h11"), default="h11")
    args = parser.parse_args(argv)
    import uvloop

    uvloop.run(serve(args))


if __name__ == "__main__":
    main()
