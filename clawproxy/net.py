"""Addresses in the config: the Ollama endpoint, the pool's node URLs and webhook URLs.

Pure parsers that raise ``ValueError`` with a message fit for a config error; the loader
(``config``) names the key. The host is a name, an IPv4 address or a bracketed IPv6
address; user info is always refused. The single ``model.endpoint`` and webhooks are plain
``http://``; a node of the pool may also be ``https://`` (``parse_node_url``), for an
Ollama behind a TLS-terminating proxy on a network that is not trusted.
"""

from __future__ import annotations

import ipaddress
import re

from clawproxy.units import show_value

_HOST_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def parse_endpoint(url: str) -> tuple[str, int]:
    """``(host, port)`` from ``http://host[:port][/]``; the port defaults to 80.

    The host may be a name, an IPv4 address or a bracketed IPv6 address (returned without
    brackets, as socket calls want it). Raises ValueError for anything else: https, userinfo,
    a path other than "/", a query, a fragment, an empty host or a bad port.
    """
    if not isinstance(url, str):
        raise ValueError(f"expected an http:// URL string, got {show_value(url)}")
    scheme, sep, rest = url.partition("://")
    if scheme.lower() == "https":
        raise ValueError(
            "https is not supported: clawproxy speaks plain HTTP to Ollama, "
            "which must sit on a trusted network"
        )
    if not sep or scheme.lower() != "http":
        raise ValueError("the URL must start with http://")
    return _split_authority(_base_authority(rest))


#: Ports implied by a node URL's scheme (RFC 9110 section 4.2).
DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_node_url(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` from ``http[s]://host[:port][/]`` (a node of the pool).

    The scheme comes back lower-case; the port defaults to 80 for http and 443 for https.
    Otherwise the rules of ``parse_endpoint``: no user info, path, query or fragment, an
    IPv6 host in brackets (returned without them).
    """
    if not isinstance(url, str):
        raise ValueError(f"expected an http:// or https:// URL string, got {show_value(url)}")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS:
        raise ValueError("the URL must start with http:// or https://")
    host, port = _split_authority(_base_authority(rest), DEFAULT_PORTS[scheme])
    return scheme, host, port


def parse_http_url(url: str) -> tuple[str, int, str]:
    """``(host, port, target)`` from ``http://host[:port][/path][?query]`` (alert webhooks).

    Like ``parse_endpoint`` (http only, no user info, IPv6 in brackets) but a path and a
    query are kept as the request target ("/" when absent); a fragment is refused.
    """
    if not isinstance(url, str):
        raise ValueError(f"expected an http:// URL string, got {show_value(url)}")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "http":
        raise ValueError("the URL must start with http:// (https is not supported)")
    if "#" in rest:
        raise ValueError("a fragment is not allowed")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, target = rest[:cut], rest[cut:]
    if "@" in authority:
        raise ValueError("user info (user@host) is not allowed")
    if any(c <= " " or c == "\x7f" for c in target):
        raise ValueError("the path must not contain spaces or control characters")
    host, port = _split_authority(authority)
    return host, port, "/" + target if target.startswith("?") or not target else target


def _base_authority(rest: str) -> str:
    """The authority of a base URL (after ``scheme://``): nothing may follow but one "/"."""
    if "?" in rest or "#" in rest:
        raise ValueError("a query or fragment is not allowed")
    authority, slash, path = rest.partition("/")
    if slash and path:
        raise ValueError("a path is not allowed (the gateway adds /api/chat itself)")
    if "@" in authority:
        raise ValueError("user info (user@host) is not allowed")
    return authority


def _split_authority(authority: str, default_port: int = 80) -> tuple[str, int]:
    if authority.startswith("["):
        host, bracket, port_text = authority[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise ValueError("malformed [IPv6] host")
        port_text = port_text[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif authority.count(":") > 1:
        raise ValueError("an IPv6 host must be in brackets, as in http://[::1]:11434")
    else:
        host, _, port_text = authority.partition(":")
        if not host:
            raise ValueError("the host is empty")
        if not _HOST_NAME.fullmatch(host):
            raise ValueError(f"{host!r} is not a host name or IPv4 address")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)
