"""What a request head may be: the limits and framing rules checked once it is complete.

Pure: a parsed head in, a ``Refusal`` or the framing it declares out; the connection acts
on the verdict (``http.server``). h11 caps only an incomplete head; the rest is ours:
request-line length (414), header count and total header bytes (431), framing that h11
tolerates but a proxy must not pass on (Content-Length with Transfer-Encoding, chunked in
HTTP/1.0, targets other than origin-form: 400; RELIABILITY 1), CONNECT (405: not a
forward proxy), and a declared body larger than ``max_body_bytes`` (413, before a byte of
it is read and without a ``100 Continue``).
"""

from __future__ import annotations

import re
from typing import NamedTuple

import h11

from clawproxy.config import ServerConfig
from clawproxy.http.heads import Headers

# The request line's fixed part: two spaces, "HTTP/1.1" and CRLF, around method and target.
REQUEST_LINE_OVERHEAD = 10
# Each header field's ": " and CRLF.
FIELD_OVERHEAD = 4


class Refusal(NamedTuple):
    """A request refused before any handler runs: status, message for the client, code."""

    status: int
    message: str
    code: str


class Framing(NamedTuple):
    """What an accepted head declares: its Content-Length (None: chunked or no body),
    whether the client asked to close after this request, and whether it waits for a
    ``100 Continue`` before sending its body."""

    length: int | None
    close_asked: bool
    expect_continue: bool


# HTTP/1.1 allows a server to refuse obsolete line folding with 400 (RFC 9112 5.2); h11
# unfolds it, so "Transfer-Encoding:\r\n chunked" would pass as chunked. A proxy must not
# read a head differently from the next hop: refused, whatever the header.
OBS_FOLD = Refusal(400, "obsolete line folding in the request head", "bad_framing")
SUPPORTED_VERSIONS = frozenset({b"1.0", b"1.1"})


def folded_head(raw: bytes | bytearray, head_len: int) -> bool:
    """Whether the first ``head_len`` bytes (a head h11 accepted) hold a folded line: a
    line that starts with a space or a tab continues the one before it."""
    return raw.find(b"\n ", 0, head_len) >= 0 or raw.find(b"\n\t", 0, head_len) >= 0


# Where h11 starts quoting the request's own bytes in a parse error ("illegal header line:
# bytearray(b'Authorization: Bearer sk-...')"): everything from there on is cut.
_QUOTED_BYTES = re.compile(r"""[:\s]*(?:bytearray\(|b'|b")""")


def parse_error_reason(exc: Exception) -> str:
    """What was wrong with a request h11 refused, without the bytes it quotes: a key or a
    prompt in a malformed header must never be echoed to the client or written to a log."""
    return _QUOTED_BYTES.split(str(exc), maxsplit=1)[0].strip() or "malformed request"


def asks_to_close(value: bytes) -> bool:
    """Whether a ``Connection`` header value holds the ``close`` option."""
    return b"close" in (t.strip().lower() for t in value.split(b","))


def body_too_large(cfg: ServerConfig) -> Refusal:
    return Refusal(413, f"request body exceeds {cfg.max_body_bytes} bytes", "request_too_large")


def check_head(head: h11.Request, headers: Headers, cfg: ServerConfig) -> Refusal | Framing:
    """The verdict on a complete request head (``headers``: its lower-cased fields)."""
    line_bytes = len(head.method) + len(head.target) + REQUEST_LINE_OVERHEAD
    if line_bytes > cfg.max_request_line_bytes:
        return Refusal(414, "request line too long", "request_line_too_long")
    if head.http_version not in SUPPORTED_VERSIONS:
        # h11 reads any HTTP/x.y line; only 1.0 and 1.1 are spoken here (HTTP/2 is nginx's).
        return Refusal(505, "only HTTP/1.0 and HTTP/1.1 are supported", "http_version")
    if len(headers) > cfg.max_headers:
        return Refusal(431, f"more than {cfg.max_headers} header fields", "too_many_headers")
    head_bytes = line_bytes
    has_te = close_asked = expect_continue = False
    length = None
    for name, value in headers:
        head_bytes += len(name) + len(value) + FIELD_OVERHEAD
        if name == b"content-length":
            # h11 validated the syntax and merged identical duplicates.
            length = int(value)
        elif name == b"transfer-encoding":
            has_te = True
        elif name == b"connection" and asks_to_close(value):
            close_asked = True
        elif name == b"expect" and value.lower() == b"100-continue":
            expect_continue = head.http_version == b"1.1"
    if head_bytes > cfg.max_header_bytes:
        return Refusal(431, "request header block too large", "headers_too_large")
    if has_te and length is not None:
        return Refusal(400, "Content-Length together with Transfer-Encoding", "bad_framing")
    if has_te and head.http_version == b"1.0":
        return Refusal(400, "chunked request body in HTTP/1.0", "bad_framing")
    if head.method == b"CONNECT":
        return Refusal(
            405, "CONNECT is not supported: this is not a forward proxy", "method_not_allowed"
        )
    if not head.target.startswith(b"/"):
        return Refusal(400, "only origin-form request targets are accepted", "bad_request_target")
    if length is not None and length > cfg.max_body_bytes:
        return body_too_large(cfg)
    return Framing(length, close_asked, expect_continue)
