"""Structured output in the simulator: a reply that honours ``format`` as Ollama does.

Theory of operation: Ollama turns a ``format`` schema into a grammar, so whatever the model
writes is a JSON document of that schema (PROTOCOL 1.6); ``"json"`` only makes it JSON.
The simulator has no model, so it *builds* the document from the schema, deterministically:
an object gets its ``required`` properties (all of them when none are listed), in the
schema's order; a string is ``"…"``, a number or integer 1 (0 when the minimum allows it
and 1 does not), a boolean ``true``; an ``enum`` gives its first value, a ``const`` its
value, ``anyOf``/``oneOf`` their first branch, ``allOf`` its branches merged, an array one
item, ``$ref`` the definition it points to in ``$defs``/``definitions``. The text is
compact (as Go writes it) and cut into token-sized pieces.

``bad_json`` is the opposite, for tests of a gateway that must notice a reply that does
not fit: valid JSON of the wrong shape (``[]``, or ``{}`` where an array was asked for).
"""

from __future__ import annotations

import json
from typing import Any

# Nesting followed before giving up on a schema (a $ref cycle): deeper values become null.
MAX_DEPTH = 32
# Characters per streamed piece: about one token of JSON text.
PIECE_CHARS = 3


def sample(schema: object, root: object = None, depth: int = 0) -> Any:
    """A value that matches ``schema`` (see the module's rules)."""
    if root is None:
        root = schema
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return sample(_resolve(ref, root), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            return sample(branches[0], root, depth + 1)
    parts = schema.get("allOf")
    if isinstance(parts, list) and parts:
        merged: dict[str, Any] = {}
        for part in parts:
            value = sample(part, root, depth + 1)
            if isinstance(value, dict):
                merged.update(value)
        return merged
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if kind == "object" or (kind is None and "properties" in schema):
        return _object(schema, root, depth)
    if kind == "array":
        items = schema.get("items")
        return [sample(items, root, depth + 1) if isinstance(items, dict) else "…"]
    if kind == "string":
        return "…"
    if kind in ("number", "integer"):
        low = schema.get("minimum")
        high = schema.get("maximum")
        if isinstance(high, int | float) and high < 1:
            return 0
        if isinstance(low, int | float) and low > 1:
            return int(low) if kind == "integer" and float(low).is_integer() else low
        return 1
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return {}


def _object(schema: dict[str, Any], root: object, depth: int) -> dict[str, Any]:
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return {}
    required = schema.get("required")
    wanted = set(required) if isinstance(required, list) else set(properties)
    return {
        name: sample(spec, root, depth + 1) for name, spec in properties.items() if name in wanted
    }


def _resolve(ref: str, root: object) -> object:
    if not ref.startswith("#/"):
        return None
    node = root
    for part in ref[2:].split("/"):
        if not isinstance(node, dict):
            return None
        node = node.get(part.replace("~1", "/").replace("~0", "~"))
    return node


def document(fmt: object) -> str:
    """The JSON text a model constrained by ``format`` writes: compact, schema order."""
    value = sample(fmt) if isinstance(fmt, dict) else {}
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def bad_json(fmt: object) -> str:
    """Valid JSON that does not match ``fmt``'s shape."""
    return "{}" if isinstance(fmt, dict) and fmt.get("type") == "array" else "[]"


def pieces(text: str) -> list[str]:
    """Cut ``text`` into token-sized pieces; ``"".join(pieces(t)) == t``."""
    return [text[i : i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS)]
