"""Which browsers and host names may use the public port: Host, Origin, media type, CORS.

Theory of operation
-------------------
With no API keys (the default), anything that can reach the public port can make it
generate, so a web page can too: a "simple" cross-site POST (``text/plain``, a form, a
multipart body, a typeless Blob) goes out with no preflight, and the page needs no answer
to spend the GPU. The router (``app.public.PublicRouter``) runs these checks on every
request before any handler, so a refused one costs no key check, no parse and no slot:

1. ``Host`` (``check_host``): with ``server.allowed_hosts`` set, a Host not listed gets 421,
   as on the admin port. A DNS-rebinding page reaches the gateway under the attacker's
   name, and this is where that name shows; with the default (any host) the other checks
   still stop every page that is not served under the gateway's own name.
2. ``Origin`` (``check_origin``), on ``/v1/*`` and the UI's data (``/ui/api/*``): browsers
   send it on every cross-origin request and on every POST; a request without one is not
   from a page. Same-origin (the UI's own pages) and the origins in
   ``server.cors.allow_origins`` pass, with the CORS headers a browser needs to read the
   answer; anything else (``null`` included) gets 403 and no CORS header.
3. The media type (``check_json_type``) of a body sent to a JSON route: ``application/json``
   (a ``charset`` other than UTF-8 is refused, RFC 8259 8.1), else 415 (``curl -d``
   without ``-H 'Content-Type: application/json'`` sends a form type and gets it). A
   request with no Content-Type passes: ``http.client`` and raw clients send none, and a
   page that sends none (a Blob) still sends its Origin.
4. Preflights (``preflight``): only with origins configured; an allowed origin gets 204
   with the methods, headers and max-age; otherwise 403 (no origins configured: no
   preflight at all, the router's 405).

Same-origin: the Origin's host equals the Host header's, and so does the port where the
Host names one (a scheme's default port counts as written). A Host without a port is
what nginx's ``proxy_set_header Host $host`` sends, so it matches the host on any port.

``"*"`` in ``allow_origins`` lets any http(s) page in, and is honoured only while API keys
are on: a page then still needs a key, which no browser attaches by itself (the gateway
uses no cookies, and never sends ``Access-Control-Allow-Credentials``). Without keys it is
ignored, with a warning at start-up, since it would be the hole this module closes. The
allowed origin is always echoed, never ``*`` (RELIABILITY 3, "CORS").
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from clawproxy.config.schema import ServerConfig
from clawproxy.errors import Forbidden, InvalidRequest, MisdirectedRequest
from clawproxy.http.request import Request
from clawproxy.policy.adminaccess import host_of, split_authority

log = logging.getLogger("clawproxy.policy")

Headers = tuple[tuple[bytes, bytes], ...]

ANY_ORIGIN = "*"
DEFAULT_PORTS = {"http": "80", "https": "443"}
# What a browser app needs to send: its key and its JSON. Requested names are added.
ALLOW_HEADERS = (b"authorization", b"content-type")
# What it may read besides the CORS-safelisted ones: the retry advice (errors.py).
EXPOSE_HEADERS = b"retry-after, x-should-retry"
# How long a browser may reuse a preflight: Chromium caps it at 7200 s (Firefox 86400 s).
MAX_AGE = b"7200"
# A preflight's requested header names: tokens (RFC 9110 5.6.2), a bounded list of them.
TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9a-z-]{1,64}")
MAX_REQUESTED_HEADERS = 32
VARY_ORIGIN = (b"vary", b"Origin")
VARY_ONLY: Headers = (VARY_ORIGIN,)
JSON_TYPE = b"application/json"
UTF8 = (b"utf-8", b'"utf-8"')


class CrossSite:
    """``server.allowed_hosts`` and ``server.cors`` for one gateway's public port."""

    __slots__ = ("any_origin", "cors", "hosts", "origins")

    def __init__(
        self, allowed_hosts: Iterable[str], allow_origins: Iterable[str], *, keys_enabled: bool
    ) -> None:
        # Empty: any Host. Names as the config normalised them (lower case, [v6]).
        self.hosts = frozenset(allowed_hosts)
        origins = frozenset(allow_origins)
        self.any_origin = ANY_ORIGIN in origins and keys_enabled
        if ANY_ORIGIN in origins and not keys_enabled:
            log.warning(
                "server.cors.allow_origins: '*' is ignored while no API keys are configured "
                "(it would let any web page use the gateway); list the origins instead"
            )
        self.origins = frozenset(o.encode("latin-1") for o in origins - {ANY_ORIGIN})
        # Whether any browser app may call cross-origin: preflights and Vary then apply.
        self.cors = bool(self.origins) or self.any_origin

    @classmethod
    def from_config(cls, server: ServerConfig, *, keys_enabled: bool) -> CrossSite:
        return cls(server.allowed_hosts, server.cors.allow_origins, keys_enabled=keys_enabled)

    def check_host(self, request: Request) -> None:
        """421 unless the Host is listed (or none are); HTTP/1.0 may omit it."""
        if not self.hosts:
            return
        host = request.header(b"host")
        if host is not None and host_of(host.decode("latin-1")) not in self.hosts:
            raise MisdirectedRequest("this gateway does not answer to that host name")

    def check_origin(self, request: Request) -> Headers:
        """The CORS headers for this request's responses; 403 for a foreign Origin."""
        origin = request.header(b"origin")
        if origin is None or same_origin(origin, request.header(b"host")):
            return VARY_ONLY if self.cors else ()
        if not self.allows(origin):
            raise Forbidden(
                "cross-origin requests from this origin are refused "
                "(server.cors.allow_origins lists the ones allowed)",
                code="origin_not_allowed",
            )
        return (
            (b"access-control-allow-origin", origin),
            (b"access-control-expose-headers", EXPOSE_HEADERS),
            VARY_ORIGIN,
        )

    def allows(self, origin: bytes) -> bool:
        """Whether ``origin`` (as sent) may call cross-origin."""
        if origin in self.origins:
            return True
        # Any origin, with keys: still only an http(s) one (never "null", a file or a sandbox).
        return self.any_origin and split_origin(origin) is not None

    def preflight(self, request: Request, methods: Iterable[bytes]) -> Headers:
        """The headers of a 204 answering a preflight; 403 for an origin not allowed."""
        origin = request.header(b"origin")
        if origin is None or not self.allows(origin):
            raise Forbidden(
                "preflight refused: this origin may not call the gateway from a browser",
                code="origin_not_allowed",
            )
        return (
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-methods", b", ".join(methods)),
            (b"access-control-allow-headers", b", ".join(allowed_headers(request))),
            (b"access-control-max-age", MAX_AGE),
            (b"vary", b"Origin, Access-Control-Request-Headers"),
        )


def allowed_headers(request: Request) -> list[bytes]:
    """``ALLOW_HEADERS`` plus the header names the preflight asks for, when they are a
    short list of tokens (the openai JavaScript client sends its ``x-stainless-*`` ones)."""
    names = list(ALLOW_HEADERS)
    asked = request.header(b"access-control-request-headers")
    if asked is None:
        return names
    wanted = [name.strip().lower() for name in asked.split(b",") if name.strip()]
    if len(wanted) > MAX_REQUESTED_HEADERS or not all(TOKEN.fullmatch(n) for n in wanted):
        return names
    return names + [name for name in dict.fromkeys(wanted) if name not in names]


def split_origin(origin: bytes) -> tuple[str, str, str] | None:
    """(scheme, host, port) of an http(s) origin, the port spelled out; None otherwise."""
    scheme, sep, authority = origin.decode("latin-1").partition("://")
    default = DEFAULT_PORTS.get(scheme)
    if not sep or default is None or "/" in authority or "@" in authority:
        return None
    parts = split_authority(authority)
    if parts is None:
        return None
    host, port = parts
    return scheme, host, port or default


def same_origin(origin: bytes, host: bytes | None) -> bool:
    """Whether ``origin`` is the gateway's own as the request's Host names it."""
    if host is None:
        return False
    parsed = split_origin(origin)
    authority = split_authority(host.decode("latin-1"))
    if parsed is None or authority is None:
        return False
    _, origin_host, origin_port = parsed
    host_name, host_port = authority
    return origin_host == host_name and (not host_port or host_port == origin_port)


def check_json_type(request: Request) -> None:
    """415 unless the body is declared ``application/json`` (UTF-8), or not declared."""
    values: list[bytes] = []
    for name, value in request.headers:  # a loop: a comprehension costs a frame (3.11)
        if name == b"content-type":
            values.append(value)
    if not values or values == [JSON_TYPE]:
        return  # the usual cases, without parsing
    media, _, params = values[0].partition(b";")
    ok = len(values) == 1 and media.strip().lower() == JSON_TYPE
    for param in params.split(b";") if ok else ():
        name, _, value = param.partition(b"=")
        if name.strip().lower() == b"charset" and value.strip().lower() not in UTF8:
            ok = False
    if not ok:
        raise InvalidRequest(
            "Content-Type must be application/json", status=415, code="unsupported_media_type"
        )
