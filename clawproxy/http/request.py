"""A complete, validated client request, and what the access log reports about it.

The connection (``http.server``) builds one per request once its body is complete; the
handlers fill in the reporting fields (status, model, tokens, outcome) as they go, and the
gateway's metrics and access log read them when the request ends.

The request id (``x-request-id``) is chosen once per request by the router that wants one
(``request_id_for``): the client's own when it is sane, else a fresh one. The connection
sends it with every response to that request and the access line ends with it.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from clawproxy.http.heads import header_value

# A client's X-Request-Id is kept when it is 1-128 characters that are safe as they are in a
# header and in a log line (the usual tracing ids: UUIDs, hex, ULIDs, ``svc:1.2-x_y``).
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}").fullmatch
# A generated id: 96 random bits, unguessable enough to correlate, not a secret. ``random``
# (Mersenne Twister, seeded once) costs no syscall; ``secrets``/``uuid4`` read the kernel.
_ID_BITS = 96


def request_id_for(offered: bytes | None) -> bytes:
    """The id of one request: the client's ``offered`` X-Request-Id when it is sane, else
    ``req_`` and 24 hex digits."""
    if offered is not None and _SANE_REQUEST_ID(offered):
        return offered
    return b"req_%024x" % random.getrandbits(_ID_BITS)


@dataclass(slots=True)
class Request:
    """A complete, validated request, plus what the access log reports about it."""

    method: bytes
    path: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    client: str
    http_version: bytes
    started: float
    status: int = 0
    model: str = "-"
    first_token_at: float | None = None
    tokens: int = 0
    outcome: str = ""
    # False for dashboards and scrapes (admin port, UI data): not counted as traffic.
    counted: bool = True
    # Sent with every response to this request, errors included; set by the router before
    # the handler runs (the UI's security headers, CORS). Rendered by ``HttpConnection``.
    response_headers: tuple[tuple[bytes, bytes], ...] = ()
    # Sent as ``x-request-id`` and logged when set (``request_id_for``; the public port).
    request_id: bytes = b""
    # What a prefix route matched past its prefix, raw (``http.router``), else empty.
    path_rest: bytes = b""
    extra: dict[str, str] = field(default_factory=dict)

    def header(self, name: bytes) -> bytes | None:
        return header_value(self.headers, name)
