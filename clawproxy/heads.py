"""Header fields of a parsed HTTP head, as the rest of the gateway reads them.

h11 validates every head; these helpers only list what it parsed, the cheap way. Both the
client side (every request) and the upstream side (every Ollama reply) use them.
"""

from __future__ import annotations

import h11

Headers = list[tuple[bytes, bytes]]


def header_list(event: h11.Request | h11.Response) -> Headers:
    """h11's validated header fields as (lower-case name, value) pairs.

    Built from ``raw_items()`` in one pass: iterating h11's ``Headers`` goes through the
    Sequence ABC, two Python calls per field, on a path every request takes twice."""
    return [(name.lower(), value) for name, value in event.headers.raw_items()]


def header_value(headers: Headers, name: bytes) -> bytes | None:
    """The first value of a (lower-case) header name, or None."""
    for key, value in headers:
        if key == name:
            return value
    return None
