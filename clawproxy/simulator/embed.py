"""``POST /api/embed`` as Ollama answers it, with made-up but deterministic vectors.

Theory of operation: ``embed_request`` validates the body the way Ollama's ``EmbedHandler``
does (``input`` a string or a list of strings, ``truncate``, ``dimensions``,
``keep_alive``) and returns the reply's bytes. A vector is seeded from a hash of the model
and the text, so the same text always gets the same vector and a test can recompute it
with ``embedding_vector``. Like Ollama's, vectors are unit length and float32: each value is
rounded to float32 and written as Go writes a ``float32`` (``gojson.go_float32``).
``dimensions`` below the model's width keeps the first values and normalises again, as
Ollama does. The width is ``embedding_width``: 768 for a model whose name says ``embed``
(nomic-embed-text and most embedding models), else 4096 (a chat model's hidden size).
"""

from __future__ import annotations

import hashlib
import math
import random
import struct
from typing import Any

from .catalog import ModelInfo
from .gojson import go_dumps, go_float32, go_string
from .validate import RequestError, expect_field

__all__ = ["embed_reply", "embedding_vector", "embedding_width", "prompt_tokens"]

EMBEDDING_WIDTH = 768
CHAT_MODEL_WIDTH = 4096
# Ollama reports these for a warm model; fixed, so replies are reproducible.
TOTAL_DURATION_NS = 14_143_917
LOAD_DURATION_NS = 1_019_500
# About four characters a token, as the chat replies count prompts.
CHARS_PER_TOKEN = 4
_STRUCT = "EmbedRequest"


def embedding_width(model: ModelInfo) -> int:
    return EMBEDDING_WIDTH if "embed" in model.name else CHAT_MODEL_WIDTH


def prompt_tokens(text: str) -> int:
    return max(1, len(text) // CHARS_PER_TOKEN)


def embedding_vector(model: ModelInfo, text: str, dimensions: int | None = None) -> list[float]:
    """The vector ``/api/embed`` returns for ``text``: unit length, every value a float32."""
    seed = hashlib.sha256(f"{model.name}\0{text}".encode()).digest()
    rng = random.Random(seed)
    values = [rng.gauss(0.0, 1.0) for _ in range(embedding_width(model))]
    if dimensions is not None and 0 < dimensions < len(values):
        values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    # Rounded to float32 in one pass: the values Go would hold in a []float32.
    count = len(values)
    packed = struct.pack(f"<{count}f", *(v / norm for v in values))
    return list(struct.unpack(f"<{count}f", packed))


def embed_inputs(body: dict[str, Any]) -> list[str]:
    """``input`` as Ollama reads it: a string (empty: nothing) or a list of strings."""
    raw = body.get("input")
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw] if raw else []
    if isinstance(raw, list):
        if not all(isinstance(item, str) for item in raw):
            raise RequestError(400, "invalid input type")
        return raw
    raise RequestError(400, "invalid input type")


def embed_reply(
    model: ModelInfo, name: str, body: dict[str, Any], *, context_length: int | None = None
) -> bytes:
    """The 200 body for a validated model; ``RequestError`` for what Ollama refuses."""
    inputs = embed_inputs(body)
    truncate = expect_field(body, _STRUCT, "truncate", bool, "bool")
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 0
    ):
        raise RequestError(400, "dimensions must be a non-negative integer")
    limit = context_length or model.context_length
    counts = [prompt_tokens(text) for text in inputs]
    if truncate is False and any(count > limit for count in counts):
        raise RequestError(400, "input exceeds maximum context length")
    vectors = [
        b"[" + b",".join(go_float32(v) for v in embedding_vector(model, text, dimensions)) + b"]"
        for text in inputs
    ]
    # Go struct order: model, embeddings, total_duration, load_duration, prompt_eval_count.
    return b"".join(
        (
            b'{"model":',
            go_string(name),
            b',"embeddings":[',
            b",".join(vectors),
            b'],"total_duration":',
            go_dumps(TOTAL_DURATION_NS),
            b',"load_duration":',
            go_dumps(LOAD_DURATION_NS),
            b',"prompt_eval_count":',
            go_dumps(sum(min(count, limit) for count in counts)),
            b"}",
        )
    )
