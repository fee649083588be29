"""A small strict reader of Prometheus' text exposition format, for a few series only.

Theory of operation: a metrics page is lines of ``name{label="value",...} value
[timestamp]``, with ``#`` comments. ``read_series`` keeps the samples of the names it is
asked for and ignores every other line unread past its name, so a large exporter page costs
one split per line. What it keeps it parses strictly: label values with their escapes
(``\\\\``, ``\\"``, ``\\n``), a float value (``NaN`` and ``+Inf`` included); a malformed kept
line is a ``ValueError`` naming its number, since a half-read GPU is worse than none.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import NamedTuple

_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float


def read_series(text: str, names: Collection[str]) -> list[Sample]:
    """The samples of ``names`` on a metrics page, in page order."""
    out: list[Sample] = []
    # Lines end at "\n" only (the format says so; str.splitlines would also cut at \x85).
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line or line.startswith("#"):
            continue
        end = len(line)
        for stop in ("{", " "):
            at = line.find(stop)
            if 0 <= at < end:
                end = at
        name = line[:end]
        if name not in names:
            continue
        try:
            out.append(_sample(name, line[end:]))
        except ValueError as exc:
            raise ValueError(f"line {number} ({name}): {exc}") from None
    return out


def _sample(name: str, rest: str) -> Sample:
    labels: dict[str, str] = {}
    if rest.startswith("{"):
        rest = _labels(rest, labels)
    fields = rest.split()
    if not 1 <= len(fields) <= 2:
        raise ValueError("expected a value and an optional timestamp")
    value = float(fields[0])
    if math.isnan(value) and fields[0] not in ("NaN", "nan"):
        raise ValueError("bad value")
    return Sample(name, labels, value)


def _labels(rest: str, labels: dict[str, str]) -> str:
    """Parse ``{a="x",b="y"}`` into ``labels``; return what follows the ``}``."""
    i = 1
    while True:
        while i < len(rest) and rest[i] in " ,":
            i += 1
        if i < len(rest) and rest[i] == "}":
            return rest[i + 1 :]
        eq = rest.find("=", i)
        if eq < 0 or rest[eq + 1 : eq + 2] != '"':
            raise ValueError("bad label")
        key = rest[i:eq].strip()
        if not key.replace("_", "a").isalnum():
            raise ValueError(f"bad label name {key!r}")
        i = eq + 2
        value: list[str] = []
        while True:
            if i >= len(rest):
                raise ValueError("unterminated label value")
            char = rest[i]
            if char == "\\":
                pair = rest[i : i + 2]
                if pair not in _ESCAPES:
                    raise ValueError("bad escape in a label value")
                value.append(_ESCAPES[pair])
                i += 2
            elif char == '"':
                i += 1
                break
            else:
                value.append(char)
                i += 1
        labels[key] = "".join(value)
