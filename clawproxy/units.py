"""Quantities in the config: durations and byte sizes (addresses are ``net``'s).

Pure parsers that raise ``ValueError`` with a message fit for a config error; the loader
(``config``) names the key. Durations and sizes are exact (``Fraction``), so ``500ms`` is
exactly 0.5 and ``1.5KiB`` exactly 1536.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Final

KIB = 1024
MIB = 1024 * KIB


def show_value(value: object) -> str:
    """A value as the user wrote it in YAML, short enough for a one-line message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_NUMBER_UNIT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)")
_DURATION_UNITS_S: Final = {
    "": Fraction(1),
    "s": Fraction(1),
    "ms": Fraction(1, 1000),
    "m": Fraction(60),
    "h": Fraction(3600),
}
# Decimal units are powers of 1000 and binary ones powers of 1024, as IEC 80000-13 says;
# "1MB" meaning 1048576 is the ambiguity this avoids.
_SIZE_UNITS_B: Final = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": KIB,
    "mib": MIB,
    "gib": 1024 * MIB,
}


def _split_quantity(text: str, what: str, example: str) -> tuple[Fraction, str]:
    """Split ``"1.5 MiB"`` into (3/2, "mib"), or say what was wrong with it."""
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"expected a {what} such as {example}, got an empty string")
    if stripped.startswith("-"):
        raise ValueError(f"a {what} cannot be negative, got {text!r}")
    match = _NUMBER_UNIT.fullmatch(stripped)
    if match is None:
        raise ValueError(f"expected a {what} such as {example}, got {text!r}")
    return Fraction(match[1]), match[2].lower()


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string ``"500ms"``, ``"30s"``, ``"2m"``, ``"1h"``,
    ``"1.5s"``, ``"30"`` (no unit means seconds). Units are case-insensitive.

    Raises ValueError for booleans, negative, empty, NaN or infinite values and unknown units.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a duration such as '30s' or '500ms', got {show_value(value)}")
    if isinstance(value, str):
        number, unit = _split_quantity(value, "duration", "'30s' or '500ms'")
        factor = _DURATION_UNITS_S.get(unit)
        if factor is None:
            raise ValueError(f"unknown duration unit in {value!r} (use ms, s, m or h)")
        number *= factor
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"a duration must be a finite number, got {value!r}")
    else:
        number = Fraction(value)
    if number < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    try:
        return float(number)
    except OverflowError:
        raise ValueError(f"duration {value!r} is too large") from None


def parse_size(value: object) -> int:
    """Bytes from an integer or a string: plain digits, ``"B"``, decimal ``KB``/``MB``/``GB``
    (powers of 1000) or binary ``KiB``/``MiB``/``GiB`` (powers of 1024), case-insensitive,
    e.g. ``"16KiB"`` -> 16384, ``"512KB"`` -> 512000, ``"1.5KiB"`` -> 1536.

    Raises ValueError for booleans, floats, negative sizes, unknown units and fractions of a byte.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(
            f"expected a size in bytes such as '1MiB' or 65536, got {show_value(value)}"
        )
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative, got {value!r}")
        return value
    number, unit = _split_quantity(value, "size", "'1MiB' or '512KB'")
    factor = _SIZE_UNITS_B.get(unit)
    if factor is None:
        raise ValueError(f"unknown size unit in {value!r} (use B, KB, MB, GB, KiB, MiB or GiB)")
    size = number * factor
    if size.denominator != 1:
        raise ValueError(f"size {value!r} is not a whole number of bytes")
    return int(size)
