"""Go ``encoding/json`` output, byte for byte, for the shapes Ollama emits.

Theory of operation: orjson already writes strings the way Go does in every respect but
two: Go also escapes ``<``, ``>`` and ``&`` (HTML safety, on by default in ``json.Marshal``)
and the JavaScript line separators U+2028/U+2029. Those bytes can only occur inside string
literals of a JSON document, so one substitution pass over orjson's output is exact. Control
characters agree already: both use the short forms ``\\b \\f \\n \\r \\t`` (Go >= 1.22) and
lowercase ``\\u00XX`` for the rest, and both leave DEL and other non-ASCII text raw.

What orjson cannot do for us is numbers and broken text:

* Floats. Go prints the shortest round-trip digits in plain decimal (``3``, ``0.00001``,
  ``100000000000000000000``) and switches to an exponent only below 1e-6 or from 1e21 up,
  written without zero padding (``1e-7``, ``1e+21``). We take the shortest digits from
  ``repr`` (the same algorithm) and lay them out by Go's rule.
* Lone surrogates in a ``str`` (what ``surrogateescape`` makes of undecodable bytes). Go
  sees invalid UTF-8 there and writes the six characters ``\\ufffd`` for each bad byte, so we
  write one ``\\ufffd`` escape per surrogate.

Dict keys are written in insertion order: we build dicts in Go struct field order, and
sort the few real Go maps (``model_info``) when we build them.
"""

from __future__ import annotations

import math
import re
import struct
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson

__all__ = ["go_dumps", "go_float32", "go_string", "go_time", "go_time_now", "http_date"]

_HTML_AND_SEPARATORS = re.compile(rb"[<>&]|\xe2\x80[\xa8\xa9]")
_GO_ESCAPES = {
    b"<": b"\\u003c",
    b">": b"\\u003e",
    b"&": b"\\u0026",
    b"\xe2\x80\xa8": b"\\u2028",
    b"\xe2\x80\xa9": b"\\u2029",
}
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_REPLACEMENT_CHAR = b"\\ufffd"

# Go's floatEncoder switches to exponent form outside [1e-6, 1e21).
_EXPONENT_BELOW = 1e-6
_EXPONENT_FROM = 1e21
# Nine significant digits always identify a float32 (IEEE 754: ceil(1 + 24 log10 2)).
_FLOAT32_MAX_DIGITS = 9
_FLOAT32 = struct.Struct("<f")

NANOS_PER_SECOND = 1_000_000_000


def _go_escape(match: re.Match[bytes]) -> bytes:
    return _GO_ESCAPES[match.group()]


def go_string(text: str) -> bytes:
    """Encode one string as Go's ``json.Marshal`` would, quotes included."""
    try:
        encoded = orjson.dumps(text)
    except TypeError:
        # Only lone surrogates make orjson refuse a str.
        pieces = [go_string(part)[1:-1] for part in _SURROGATE.split(text)]
        encoded = b'"' + _ESCAPED_REPLACEMENT_CHAR.join(pieces) + b'"'
        return encoded
    if _HTML_AND_SEPARATORS.search(encoded) is None:
        return encoded
    return _HTML_AND_SEPARATORS.sub(_go_escape, encoded)


def _go_float(value: float) -> bytes:
    if not math.isfinite(value):
        # json.Marshal fails with UnsupportedValueError; so do we.
        raise ValueError(f"json: unsupported value: {value!r}")
    if value == 0.0:
        return b"-0" if math.copysign(1.0, value) < 0 else b"0"
    shortest = Decimal(repr(value)).normalize()
    magnitude = abs(value)
    if _EXPONENT_BELOW <= magnitude < _EXPONENT_FROM:
        return format(shortest, "f").encode()
    sign, digits, exponent = shortest.as_tuple()
    assert isinstance(exponent, int)
    mantissa = str(digits[0])
    if len(digits) > 1:
        mantissa += "." + "".join(map(str, digits[1:]))
    exp10 = exponent + len(digits) - 1
    text = f"{'-' if sign else ''}{mantissa}e{'+' if exp10 >= 0 else '-'}{abs(exp10)}"
    return text.encode()


def go_float32(value: float) -> bytes:
    """A float32 (held in a Python float) as Go's ``json.Marshal`` writes a ``float32``: the
    fewest digits that read back as the same float32 (``0.1``, not ``0.10000000149011612``).

    Those digits, read as a double, print back as themselves, so ``_go_float`` lays them out
    (plain or exponent form) exactly as it does for a float64."""
    for digits in range(1, _FLOAT32_MAX_DIGITS + 1):
        text = f"{value:.{digits}g}"
        if _to_float32(float(text)) == value:
            return _go_float(float(text))
    return _go_float(value)


def _to_float32(value: float) -> float:
    result: float = _FLOAT32.unpack(_FLOAT32.pack(value))[0]
    return result


def _encode(value: Any, out: list[bytes]) -> None:
    # Order matters: bool is an int subclass, str checks come first because they dominate.
    if isinstance(value, str):
        out.append(go_string(value))
    elif value is None:
        out.append(b"null")
    elif value is True:
        out.append(b"true")
    elif value is False:
        out.append(b"false")
    elif isinstance(value, int):
        out.append(str(value).encode())
    elif isinstance(value, float):
        out.append(_go_float(value))
    elif isinstance(value, dict):
        out.append(b"{")
        first = True
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"go_dumps: dict keys must be str, not {type(key).__name__}")
            if not first:
                out.append(b",")
            first = False
            out.append(go_string(key))
            out.append(b":")
            _encode(item, out)
        out.append(b"}")
    elif isinstance(value, list | tuple):
        out.append(b"[")
        for index, item in enumerate(value):
            if index:
                out.append(b",")
            _encode(item, out)
        out.append(b"]")
    else:
        raise TypeError(f"go_dumps: cannot encode {type(value).__name__}")


def go_dumps(value: Any) -> bytes:
    """Serialize ``value`` exactly like Go's ``json.Marshal`` (compact, no trailing newline).

    Supports ``dict`` (str keys, insertion order kept), ``list``/``tuple``, ``str``, ``int``,
    ``float``, ``bool`` and ``None``. Raises ``TypeError`` for anything else and
    ``ValueError`` for NaN and infinities, as Go does.
    """
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


class _SecondCache:
    """Formats a whole-second prefix once per second; the hot path only adds the fraction."""

    __slots__ = ("_format", "_prefix", "_second")

    def __init__(self, formatter: Callable[[int], str]) -> None:
        self._format = formatter
        self._second = -1
        self._prefix = ""

    def prefix(self, second: int) -> str:
        if second != self._second:
            self._prefix = self._format(second)
            self._second = second
        return self._prefix


def _rfc3339_seconds(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


_RFC3339_CACHE = _SecondCache(_rfc3339_seconds)


def go_time(unix_nanos: int) -> str:
    """Render a UTC instant as Go's ``time.Time`` marshals it (RFC 3339, ``Z``).

    Go trims trailing zeros of the nanoseconds, and drops the dot when nothing is left,
    so the number of fractional digits varies from line to line.
    """
    second, nanos = divmod(unix_nanos, NANOS_PER_SECOND)
    prefix = _RFC3339_CACHE.prefix(second)
    if nanos == 0:
        return prefix + "Z"
    return f"{prefix}.{nanos:09d}".rstrip("0") + "Z"


def go_time_now() -> str:
    """``go_time`` of the current wall clock (Ollama stamps ``time.Now().UTC()``)."""
    return go_time(time.time_ns())


# Spelled out rather than strftime's %a/%b, which follow LC_TIME; HTTP dates never do.
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _imf_fixdate(second: int) -> str:
    t = time.gmtime(second)
    return (
        f"{_WEEKDAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


_DATE_CACHE = _SecondCache(_imf_fixdate)


def http_date() -> str:
    """The ``Date`` header value Go's net/http writes (RFC 7231 IMF-fixdate), cached per second."""
    return _DATE_CACHE.prefix(int(time.time()))
