"""OpenAI's model list, from Ollama's ``/api/tags``.

An OpenAI model object has ``id``, ``object``, ``created`` (Unix seconds) and ``owned_by``:
the id is Ollama's name as is (tags and namespaces included), ``created`` its
``modified_at``, and the owner the namespace of a ``namespace/name`` model, else
``library`` (Ollama's own models).

``GET /v1/models/{id}`` takes the id from the rest of the path (``model_id``) and looks it
up in the same list, the way Ollama compares names (``find_model``).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

from clawproxy.ollama.catalog import canonical

# Far beyond any Ollama name (a registry host, a namespace, a name and a tag).
MAX_MODEL_ID_BYTES = 512


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


def model_id(rest: bytes) -> str | None:
    """The model id named by the raw path ``rest`` after ``/v1/models/``, or None when it
    cannot name a model.

    Percent-decoded once: the official clients encode the ``/`` of ``hf.co/org/model`` as
    ``%2F`` (and would any other reserved byte). Routing already happened on the raw path,
    so decoding cannot reach another route; what it can do is hide ``..`` or control bytes,
    so the decoded id must be printable ASCII with no space (no Ollama name has one) and no
    empty, ``.`` or ``..`` segment. Such an id is an unknown model, not an error of its own.
    """
    raw = unquote_to_bytes(rest) if b"%" in rest else rest
    if len(raw) > MAX_MODEL_ID_BYTES or not raw.isascii():
        return None
    text = raw.decode("ascii")
    if not text.isprintable() or " " in text:
        return None
    if any(segment in ("", ".", "..") for segment in text.split("/")):
        return None
    return text


def find_model(models: Iterable[dict[str, Any]], wanted: str) -> dict[str, Any] | None:
    """The model object (``model_entry``) named ``wanted`` as Ollama matches names
    (case-insensitive, ``:latest`` implied: the chat model check's rule), or None."""
    key = canonical(wanted)
    for model in models:
        if canonical(str(model["id"])) == key:
            return model
    return None
