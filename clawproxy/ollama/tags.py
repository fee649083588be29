"""Ollama's ``/api/tags`` (the installed models), read once for everyone who needs it.

The catalog wants the names (its allow-list); the OpenAI model list wants name and date.
Both read the same validated entries from here, so an unreadable list is refused the same
way everywhere: a 502 that says so, never a half-read answer.
"""

from __future__ import annotations

from typing import Any

import orjson

from clawproxy.errors import UpstreamUnavailable


def parse_tags(body: bytes) -> list[dict[str, Any]]:
    """The ``models`` entries of an ``/api/tags`` body, each an object with a ``name``."""
    try:
        models = orjson.loads(body)["models"] or []
        if not all(isinstance(m, dict) and "name" in m for m in models):
            raise TypeError
        return list(models)
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise UpstreamUnavailable("Ollama sent an unreadable model list") from None
