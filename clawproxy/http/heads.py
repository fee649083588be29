"""Header fields of a parsed HTTP head, as the rest of the gateway reads them.

h11 validates every head; these helpers only read what it parsed, the cheap way: the
client side on every request, the upstream side on every Ollama reply.
"""

from __future__ import annotations

from typing import Any, cast

import h11

Headers = list[tuple[bytes, bytes]]


def header_list(event: h11.Request | h11.Response) -> Headers:
    """h11's validated header fields as (lower-case name, value) pairs.

    Built from ``raw_items()`` in one pass: iterating h11's ``Headers`` goes through the
    Sequence ABC, two Python calls per field, on a path every request takes twice."""
    return [(name.lower(), value) for name, value in event.headers.raw_items()]


def body_data(event: h11.Data) -> bytes | bytearray:
    """A body event's bytes, typed as what h11 hands out: a bytearray slice of its buffer,
    though its annotation says bytes (the compiled build checks annotations when it reads
    an attribute, so the read goes through ``Any``)."""
    data: bytes | bytearray = cast(Any, event).data
    return data


def header_value(headers: Headers, name: bytes) -> bytes | None:
    """The first value of a (lower-case) header name, or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


def is_chunked(event: h11.Response) -> bool:
    """Whether a response's body is chunked (h11 accepts no other transfer-coding)."""
    for name, value in event.headers.raw_items():
        if name.lower() == b"transfer-encoding":
            return value.lower() == b"chunked"
    return False
