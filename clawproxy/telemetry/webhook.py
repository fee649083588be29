"""Webhook delivery: one JSON POST over http:// or https://, retried with backoff.

Theory of operation
-------------------
``post_json()`` is the whole HTTP client: one HTTP/1.1 POST over an asyncio stream with h11,
``Connection: close``, TLS from the standard library's ``ssl`` for an https:// URL (the
system's CAs, or the webhook's ``ca_file``; the host name is checked). The connect is
bounded by its own timeout and the whole exchange by another. Only the status line is read;
redirects are not followed (the URL is the operator's, and a redirect is where SSRF tricks
live).

``Delivery`` owns the retry policy: a connect error, a timeout or a 5xx answer is tried
again after each of ``delays`` (1 s, then 2 s by default: a receiver that restarts or
sheds load gets a few seconds, an alert still arrives within them); a 4xx is final (the
request itself is wrong: a bad token, a bad body). The sleep is injected, so tests retry
without waiting. ``Delivery.send()`` returns True or False and never raises for a network
failure: the caller counts the outcome.

Everything here runs in background tasks (``alerts.GpuAlerts`` bounds how many): nothing
on a request's path waits for a webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import cache

import h11

from clawproxy.net import parse_http_url

log = logging.getLogger("clawproxy.alerts")

# Bytes read per receive while waiting for the webhook's status line.
READ_CHUNK_BYTES = 4096
USER_AGENT = b"clawproxy"
# Pauses before the second and third attempts: 3 attempts within about 3 s plus timeouts.
DEFAULT_RETRY_DELAYS: tuple[float, ...] = (1.0, 2.0)

Header = tuple[bytes, bytes]
Sleep = Callable[[float], Awaitable[None]]


class WebhookError(Exception):
    """The webhook receiver did not answer with an HTTP response."""


@dataclass(frozen=True, slots=True)
class WebhookUrl:
    """A parsed webhook URL: where to connect and what to ask for."""

    scheme: str
    host: str
    port: int
    target: str

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def where(self) -> str:
        """``host:port`` only: the path or query may carry a token, so logs show this."""
        return f"{self.host}:{self.port}"


def parse_webhook_url(url: str) -> WebhookUrl:
    """``http[s]://host[:port][/path][?query]`` with the rules of ``net.parse_http_url``
    (no user info, no fragment, IPv6 in brackets); https defaults to port 443."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https"):
        raise ValueError("the URL must start with http:// or https://")
    host, port, target = parse_http_url("http://" + rest)
    if scheme == "https" and not _has_port(rest):
        port = 443
    return WebhookUrl(scheme, host, port, target)


def _has_port(rest: str) -> bool:
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority = rest[:cut]
    return ":" in authority.rpartition("]")[2]


@cache
def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """A client context that checks the certificate and host name: the system's CAs, or
    only those in ``ca_file``. Cached: loading the system store costs milliseconds."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def request_bytes(
    url: WebhookUrl, body: bytes | None, headers: Sequence[Header]
) -> tuple[h11.Connection, bytes]:
    """The client connection (now waiting for the response) and the request's bytes: a
    JSON POST of ``body``, or a GET when ``body`` is None (``telemetry.scrape``)."""
    default_port = 443 if url.tls else 80
    host = f"[{url.host}]" if ":" in url.host else url.host
    host_header = host if url.port == default_port else f"{host}:{url.port}"
    conn = h11.Connection(h11.CLIENT)
    fields = [(b"Host", host_header.encode()), (b"User-Agent", USER_AGENT)]
    if body is not None:
        fields += [(b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % len(body))]
    fields += [(b"Connection", b"close"), *headers]
    request = h11.Request(
        method=b"GET" if body is None else b"POST", target=url.target.encode(), headers=fields
    )
    out = conn.send(request) or b""
    if body is not None:
        out += conn.send(h11.Data(data=body)) or b""
    return conn, out + (conn.send(h11.EndOfMessage()) or b"")


@contextlib.asynccontextmanager
async def connected(
    where: WebhookUrl, connect_timeout: float | None, ca_file: str | None
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A stream to ``where`` (TLS for https, the host name checked), the connect bounded by
    ``connect_timeout``; closed when the block ends. The caller bounds the whole exchange."""
    async with asyncio.timeout(connect_timeout):
        reader, writer = await asyncio.open_connection(
            where.host,
            where.port,
            ssl=tls_context(ca_file) if where.tls else None,
            server_hostname=where.host if where.tls else None,
        )
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def next_event(conn: h11.Connection, reader: asyncio.StreamReader, gone: str) -> object:
    """h11's next event, reading from ``reader`` while h11 needs more; ``WebhookError(gone)``
    when the server closes first."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await reader.read(READ_CHUNK_BYTES)
        if not data:
            raise WebhookError(gone)
        conn.receive_data(data)


async def post_json(
    url: str,
    body: bytes,
    timeout: float,
    *,
    connect_timeout: float | None = None,
    ca_file: str | None = None,
    headers: Sequence[Header] = (),
) -> int:
    """POST ``body`` as JSON to an http:// or https:// ``url``; return the response status.

    ``timeout`` bounds the whole exchange, ``connect_timeout`` (default: ``timeout``) the
    TCP and TLS handshakes. Raises TimeoutError, OSError (``ssl.SSLError`` included),
    WebhookError or h11.ProtocolError.
    """
    where = parse_webhook_url(url)
    conn, out = request_bytes(where, body, headers)
    async with asyncio.timeout(timeout), connected(where, connect_timeout, ca_file) as stream:
        reader, writer = stream
        writer.write(out)
        await writer.drain()
        while True:
            event = await next_event(
                conn, reader, "the receiver closed the connection without answering"
            )
            if isinstance(event, h11.Response):
                return event.status_code
            # InformationalResponse (100 Continue): keep reading.


Poster = Callable[..., Awaitable[int]]

# Failures worth another attempt; anything else is a bug and propagates.
RETRYABLE = (OSError, TimeoutError, WebhookError, h11.ProtocolError)


class Delivery:
    """The retry policy around ``post_json``: see the module doc."""

    def __init__(
        self,
        *,
        timeout: float,
        connect_timeout: float,
        delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
        post: Poster = post_json,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.delays = tuple(delays)
        self.post = post
        self.sleep = sleep

    async def send(
        self,
        url: str,
        body: bytes,
        *,
        ca_file: str | None = None,
        headers: Sequence[Header] = (),
    ) -> bool:
        """Deliver ``body``; True once a 2xx came back, False after the last failure."""
        where = parse_webhook_url(url).where
        attempts = len(self.delays) + 1
        for attempt in range(1, attempts + 1):
            try:
                status = await self.post(
                    url,
                    body,
                    self.timeout,
                    connect_timeout=self.connect_timeout,
                    ca_file=ca_file,
                    headers=headers,
                )
            except RETRYABLE as exc:
                problem = str(exc) or type(exc).__name__
                retry = True
            else:
                if 200 <= status < 300:
                    return True
                problem = f"HTTP {status}"
                retry = status >= 500
            if not retry or attempt == attempts:
                log.warning(
                    "alert webhook to %s failed (attempt %d of %d): %s",
                    where,
                    attempt,
                    attempts,
                    problem,
                )
                return False
            log.info("alert webhook to %s: %s; retrying", where, problem)
            await self.sleep(self.delays[attempt - 1])
        return False  # unreachable: the loop returns on its last attempt
