"""OpenAI's model list, from Ollama's ``/api/tags``.

An OpenAI model object has ``id``, ``object``, ``created`` (Unix seconds) and ``owned_by``:
the id is Ollama's name as is (tags and namespaces included), ``created`` its
``modified_at``, and the owner the namespace of a ``namespace/name`` model, else
``library`` (Ollama's own models).
"""

from __future__ import annotations

import datetime
from typing import Any


def model_entry(model: dict[str, Any]) -> dict[str, Any]:
    name = str(model["name"])
    namespace, slash, _ = name.partition("/")
    return {
        "id": name,
        "object": "model",
        "created": unix_seconds(model.get("modified_at")),
        "owned_by": namespace if slash else "library",
    }


def unix_seconds(stamp: object) -> int:
    """Go's RFC 3339 time with up to 9 fractional digits -> Unix seconds (0 if unreadable)."""
    if not isinstance(stamp, str):
        return 0
    main, dot, rest = stamp.partition(".")
    if dot:
        # Python parses at most 6 fractional digits; drop the rest, keep the zone.
        digits = len(rest) - len(rest.lstrip("0123456789"))
        stamp = f"{main}.{rest[: min(digits, 6)]}{rest[digits:]}"
    try:
        return int(datetime.datetime.fromisoformat(stamp).timestamp())
    except ValueError:
        return 0
