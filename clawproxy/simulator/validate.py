"""Request checks in the order and words of Ollama's Go handlers.

Theory of operation: Ollama rejects a request before any stream starts, with a real status
and ``{"error": ...}``. The messages that matter to a client are reproduced: gin's JSON
binding errors (``missing request body``, Go's ``json: cannot unmarshal ...``), the
``think`` value check, and the DNS-rebinding guard that answers an empty 403 to a foreign
``Host`` while listening on loopback. Everything here is pure and raises ``RequestError``.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import orjson

__all__ = ["RequestError", "check_think", "expect_field", "host_allowed", "parse_body"]

THINK_LEVELS = ("high", "medium", "low", "max")
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")
_JSON_VALUE_STARTS = '{["-0123456789tfn'


class RequestError(Exception):
    """A rejection before the response starts: status plus Ollama's error text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def parse_body(body: bytes, struct: str) -> dict[str, Any]:
    """The request JSON object, or the 400 that Go's decoder would have caused."""
    text = body.strip()
    if not text:
        raise RequestError(400, "missing request body")
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        first = chr(text[0])
        if first not in _JSON_VALUE_STARTS:
            message = f"invalid character '{first}' looking for beginning of value"
        else:
            message = "unexpected EOF"
        raise RequestError(400, message) from None
    if not isinstance(value, dict):
        raise RequestError(
            400, f"json: cannot unmarshal {_json_type(value)} into Go value of type api.{struct}"
        )
    return value


def expect_field(body: dict[str, Any], struct: str, name: str, kind: type, go_type: str) -> Any:
    """``body[name]`` if absent, null or of ``kind``; otherwise Go's unmarshal error."""
    value = body.get(name)
    if value is not None and not isinstance(value, kind):
        raise RequestError(
            400,
            f"json: cannot unmarshal {_json_type(value)} into Go struct field "
            f"{struct}.{name} of type {go_type}",
        )
    return value


def check_think(value: Any) -> Any:
    """``think`` must be a bool or one of the effort levels (api.ThinkValue)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value in THINK_LEVELS:
        return value
    if isinstance(value, str):
        raise RequestError(
            400,
            f'invalid think value: "{value}" (must be "high", "medium", "low", "max", '
            "true, or false)",
        )
    raise RequestError(
        400, 'think must be a boolean or string ("high", "medium", "low", "max", true, or false)'
    )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def host_allowed(listen_host: str, host_header: str | None) -> bool:
    """Ollama's allowed-hosts rule: anything goes unless it listens on loopback.

    On loopback, the ``Host`` must be an IP that is loopback, private or unspecified, or
    ``localhost``, this machine's name, or a name under ``.localhost``, ``.local`` or
    ``.internal``. (Ollama also accepts the IPs of local interfaces; we do not look them up.)
    """
    if not _is_loopback(listen_host):
        return True
    host = host_header or ""
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        host = host.lower()
        return host in ("", "localhost", socket.gethostname().lower()) or host.endswith(
            _LOCAL_SUFFIXES
        )
    return address.is_loopback or address.is_private or address.is_unspecified
