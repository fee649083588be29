"""OpenAI Embeddings to Ollama's ``/api/embed`` and back.

Theory of operation: two pure functions. ``build_embeddings_plan`` turns the decoded
request body into an ``EmbeddingsPlan``; like chat's mapping, the Ollama payload is rebuilt
from validated fields only, so unknown fields (``user``, Ollama-only knobs such as
``truncate`` or ``keep_alive``) are ignored and never forwarded. The cheap fields go first
(model, ``encoding_format``, ``dimensions``, the shape and the count of ``input``), so a
request refused for one of them costs no walk over its inputs; then each input is checked.
Token arrays (a list of ints, a list of lists of ints) are refused: Ollama's ``/api/embed``
takes text only, and a silently different answer is worse than a 400.

``render_embeddings`` turns Ollama's reply (``{"embeddings": [[...]], "prompt_eval_count"}``)
into OpenAI's list object. Ollama computes float32 values, and the gateway hands out
float32 values either way: each vector goes through ``array('f')`` once, which also checks
that it holds only numbers. ``encoding_format: "float"`` writes them as JSON numbers (the
float32 value widened to a double, as OpenAI's own replies read); ``"base64"`` (what the
official Python client asks for by default, and decodes with numpy or ``array``) writes the
little-endian float32 bytes in base64. Both decode to the same floats. A reply of another
shape is Ollama's failure: 502.

The options carry ``num_ctx`` from the configuration as chat's do: the model may be the one
chat uses, and a runner asked for a different context length is reloaded for everyone.
"""

from __future__ import annotations

import array
import base64
import sys
from dataclasses import dataclass
from typing import Any

import orjson

from clawproxy.errors import InvalidRequest, UpstreamFailed
from clawproxy.openai.mapping import parse_model_name
from clawproxy.openai.messages import invalid, is_int

# Far above any model's embedding width (the widest common ones are 4096 to 8192), and an
# int that Ollama's Go decoder takes.
MAX_DIMENSIONS = 65_536
ENCODING_FORMATS = ("float", "base64")
# Bounds what one reply may make the gateway hold: per input, a vector of up to 16,384
# values of at most 24 bytes each in Go's JSON (``-1.2345678e-12,``), plus the envelope.
MAX_REPLY_BYTES_PER_INPUT = 16_384 * 24
REPLY_ENVELOPE_BYTES = 64 * 1024

_TOKENS_REFUSED = (
    "must be a string or an array of strings: token arrays are not supported, "
    "Ollama's /api/embed takes text"
)
_BIG_ENDIAN = sys.byteorder == "big"
_INFINITY = float("inf")


@dataclass(frozen=True, slots=True)
class EmbeddingsPlan:
    """One embeddings request: what to ask Ollama and how to render its answer."""

    model: str
    inputs: int
    base64: bool
    payload: dict[str, Any]

    @property
    def reply_limit(self) -> int:
        """The most bytes Ollama's reply to this request may take."""
        return REPLY_ENVELOPE_BYTES + self.inputs * MAX_REPLY_BYTES_PER_INPUT


def build_embeddings_plan(
    body: object, default_model: str, context_length: int, max_inputs: int
) -> EmbeddingsPlan:
    """Validate an OpenAI embeddings request body and build the ``/api/embed`` request.

    Raises ``InvalidRequest`` (400) with the offending field in ``param``.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    value = body.get("model")
    model = default_model if value is None else parse_model_name(value)
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ENCODING_FORMATS:
        raise invalid("encoding_format", "must be one of float, base64")
    dimensions = body.get("dimensions")
    if dimensions is not None and not (is_int(dimensions) and 1 <= dimensions <= MAX_DIMENSIONS):
        raise invalid("dimensions", f"must be an integer between 1 and {MAX_DIMENSIONS}")
    inputs = _read_input(body.get("input"), max_inputs)
    payload: dict[str, Any] = {
        "model": model,
        "input": inputs,
        "options": {"num_ctx": context_length},
    }
    if dimensions is not None:
        payload["dimensions"] = dimensions
    return EmbeddingsPlan(model, len(inputs), fmt == "base64", payload)


def _read_input(value: object, max_inputs: int) -> list[str]:
    if isinstance(value, str):
        if not value:
            raise invalid("input", "must not be an empty string")
        return [value]
    if value is None:
        raise invalid("input", "is required")
    if not isinstance(value, list):
        raise invalid(
            "input", _TOKENS_REFUSED if is_int(value) else "must be a string or an array of strings"
        )
    if not value:
        raise invalid("input", "must not be an empty array")
    first = value[0]
    if is_int(first) or isinstance(first, list):
        raise invalid("input", _TOKENS_REFUSED)
    if len(value) > max_inputs:
        raise invalid("input", f"must have at most {max_inputs} entries")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise invalid(f"input[{i}]", "must be a string")
        if not item:
            raise invalid(f"input[{i}]", "must not be an empty string")
    return value


def render_embeddings(plan: EmbeddingsPlan, reply: bytes) -> tuple[bytes, int]:
    """OpenAI's embeddings list from Ollama's reply, and the prompt tokens it reports."""
    try:
        parsed = orjson.loads(reply)
    except orjson.JSONDecodeError:
        raise _bad_reply("not JSON") from None
    if not isinstance(parsed, dict):
        raise _bad_reply("not an object")
    vectors = parsed.get("embeddings")
    if not isinstance(vectors, list) or len(vectors) != plan.inputs:
        raise _bad_reply(f"not {plan.inputs} embeddings")
    tokens = parsed.get("prompt_eval_count", 0)
    if not is_int(tokens) or tokens < 0:
        raise _bad_reply("prompt_eval_count is not a count")
    data = []
    for index, vector in enumerate(vectors):
        values = _float32(vector)
        embedding: str | list[float]
        if plan.base64:
            if _BIG_ENDIAN:
                values.byteswap()
            embedding = base64.b64encode(values.tobytes()).decode("ascii")
        else:
            embedding = values.tolist()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    body = orjson.dumps(
        {
            "object": "list",
            "data": data,
            "model": plan.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
    return body, tokens


def _float32(vector: object) -> array.array[float]:
    """A vector as float32 values; anything but a non-empty list of finite numbers is a
    bad reply. ``array`` rounds each double to the nearest float32, as Go's decoder would."""
    if not isinstance(vector, list) or not vector:
        raise _bad_reply("an embedding is not a list of numbers")
    try:
        values = array.array("f", vector)
    except (TypeError, OverflowError):
        raise _bad_reply("an embedding is not a list of numbers") from None
    # A double beyond float32's range becomes infinity (orjson never yields NaN).
    if _INFINITY in values or -_INFINITY in values:
        raise _bad_reply("an embedding value is out of float32 range")
    return values


def _bad_reply(why: str) -> UpstreamFailed:
    return UpstreamFailed(f"Ollama's embeddings reply is not the expected shape: {why}")
