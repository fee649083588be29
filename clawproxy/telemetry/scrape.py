"""One bounded GET of a metrics page over http:// or https://: the remote GPU reader's client.

Theory of operation: the same small h11 client as the webhooks (``telemetry.webhook``: its
URL rules, its TLS context, its request bytes), asking with GET and reading the whole body,
at most ``limit`` bytes, within ``timeout`` (the connect within ``connect_timeout``). Any
failure is a ``ScrapeError`` with a one-line reason; nothing is retried (the next tick
asks again).
"""

from __future__ import annotations

import asyncio

import h11

from clawproxy.telemetry.webhook import (
    WebhookError,
    connected,
    next_event,
    parse_webhook_url,
    request_bytes,
)


class ScrapeError(Exception):
    """The metrics page could not be read."""


async def fetch_text(
    url: str, *, timeout: float, connect_timeout: float, limit: int, ca_file: str | None = None
) -> str:
    """The body of a 200 answer to GET ``url``, as text; ``ScrapeError`` otherwise."""
    where = parse_webhook_url(url)
    conn, out = request_bytes(where, None, ())
    try:
        async with asyncio.timeout(timeout), connected(where, connect_timeout, ca_file) as stream:
            reader, writer = stream
            writer.write(out)
            await writer.drain()
            return await _read_body(conn, reader, limit)
    except TimeoutError:
        raise ScrapeError(f"no answer from {where.where} within {timeout:g}s") from None
    except (OSError, WebhookError, h11.ProtocolError) as exc:
        raise ScrapeError(f"{where.where}: {exc or type(exc).__name__}") from None


async def _read_body(conn: h11.Connection, reader: asyncio.StreamReader, limit: int) -> str:
    body = bytearray()
    status = 0
    while True:
        event = await next_event(conn, reader, "the server closed the connection mid-answer")
        if isinstance(event, h11.Response):
            status = event.status_code
            if status != 200:
                raise WebhookError(f"HTTP {status}")
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > limit:
                raise WebhookError(f"the page is larger than {limit} bytes")
        elif isinstance(event, h11.EndOfMessage):
            return body.decode("utf-8", "replace")
