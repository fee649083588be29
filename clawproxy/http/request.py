"""A complete, validated client request, and what the access log reports about it.

The connection (``http.server``) builds one per request once its body is complete; the
handlers fill in the reporting fields (status, model, tokens, outcome) as they go, and the
gateway's metrics and access log read them when the request ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clawproxy.http.heads import header_value


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
    extra: dict[str, str] = field(default_factory=dict)

    def header(self, name: bytes) -> bytes | None:
        return header_value(self.headers, name)
