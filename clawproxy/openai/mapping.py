"""Translate an OpenAI Chat Completions request into an Ollama ``/api/chat`` request.

Theory of operation: ``build_chat_plan`` is a pure function from the decoded request body
to a ``ChatPlan``. The Ollama payload is *rebuilt* from validated fields only, never copied
from the client's object, so Ollama-only knobs a client slips in (``options``,
``keep_alive``, ``num_ctx``, ``think``, ``format``, ``api_base``...) cannot reach upstream,
and duplicate-key tricks cannot split what was checked from what is sent.

Each request field has one small reader; the options object is assembled from a table of
readers in Ollama's key order. Fields that would silently change the answer if dropped
(``n``, ``logit_bias``, ``logprobs``, ``audio``...) are refused with a 400 up front;
harmless unknown fields are ignored. Messages are handled by ``clawproxy.messages``.

Two passes, because this runs on the event loop before admission and every millisecond
here stalls every stream on the loop. First the fields that cost a lookup or two (model,
stream, the numbers, ``tool_choice``, the shapes of ``response_format`` and ``tools``), so
a request refused for one of them costs no walk: a late bad field behind a 90,000-key
schema cost 51 ms. Then the walks (messages, the schemas), each bounded by a limit over
the whole request and refused where it crosses, before the rest is visited.

The payload always says ``"stream": true``: the gateway streams from Ollama even for a
non-streaming client and aggregates itself, so the silence timeout covers every request.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

import orjson

from clawproxy.config import ModelConfig
from clawproxy.errors import InvalidRequest
from clawproxy.openai.forced import ForcedCall, build_forced
from clawproxy.openai.messages import (
    JsonLimit,
    copy_json_object,
    invalid,
    is_int,
    is_number,
    optional_str,
    translate_messages,
)

# Far above any local model's context, yet small enough that a typo cannot ask for a
# practically unbounded generation that holds a slot for hours.
MAX_TOKENS_LIMIT = 1_000_000
# OpenAI's documented limit for ``stop``.
MAX_STOP_SEQUENCES = 4
# OpenAI's documented limit for ``tools``; each tool costs prompt tokens on every turn.
MAX_TOOLS = 128
# JSON values in all tools' parameters and the response_format schema together. OpenAI's
# Structured Outputs allow 5,000 object properties in a schema; a property is about four
# values (its object, type, description, an enum entry).
MAX_SCHEMA_VALUES = 20_000
# Ollama model names are short; 200 leaves room for namespace/name:tag with long tags.
MAX_MODEL_NAME_CHARS = 200
# Ollama's seed is a Go int64.
_SEED_MIN = -(2**63)
_SEED_MAX = 2**63 - 1

# One segment: starts with a letter, digit or underscore (never '.' or '-'), then the
# characters Ollama allows in names and tags. ASCII only, spelled out.
_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
_MODEL_NAME_RE = re.compile(rf"(?:(?P<namespace>{_SEGMENT})/)?{_SEGMENT}(?::{_SEGMENT})?")

# OpenAI reasoning_effort -> Ollama think (the same mapping Ollama's own /v1 layer uses).
_THINK_LEVELS: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "max",
    "max": "max",
}
_THINK_LEVEL_LIST = ", ".join(_THINK_LEVELS)


@dataclass(frozen=True, slots=True)
class ChatPlan:
    """What the gateway needs to run one chat completion.

    ``stream`` and ``include_usage`` describe what the *client* asked for; ``payload`` is
    the complete ``/api/chat`` JSON body, which always streams from Ollama. ``forced`` is
    set when ``tool_choice`` forces a call (``forced``): the payload then asks for its schema
    as ``format`` and the answer is re-framed as that call.
    """

    model: str
    stream: bool
    include_usage: bool
    payload: dict[str, Any]
    forced: ForcedCall | None = None


def parse_json_body(body: bytes) -> object:
    """A request body as JSON; 400 otherwise. orjson refuses NaN, lone surrogates, invalid
    UTF-8 and nesting deeper than 1024, and its message names a position, never content."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"request body is not valid JSON: {exc}", code="invalid_json"
        ) from None


def build_chat_plan(body: object, defaults: ModelConfig) -> ChatPlan:
    """Validate an OpenAI chat request body and build the Ollama request for it.

    ``body`` is whatever the JSON decoder returned. Raises ``InvalidRequest`` (400) with
    the offending field's path in ``param`` on any problem.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    # Most requests carry a few of the optional fields: one set intersection decides which
    # readers run (a reader treats an explicit null as absent, as before).
    present = body.keys() & _OPTIONAL_FIELDS
    # The cheap pass: nothing here visits more than a few values.
    if present & _REFUSED_FIELDS:
        _refuse_unsupported(body)
    model = _read_model(body, defaults)
    stream, include_usage = read_stream(body)
    options = _read_options(body, defaults, present)
    think = _read_think(body) if present & _THINK_FIELDS else None
    fmt = _read_format(body["response_format"]) if "response_format" in present else None
    tools = _read_tools(body) if present & _TOOL_FIELDS else None
    # The walks, each within its limit.
    payload: dict[str, Any] = {
        "model": model,
        "messages": translate_messages(body.get("messages")),
        "stream": True,
        "options": options,
    }
    schemas = JsonLimit(
        MAX_SCHEMA_VALUES, "the JSON schemas", "all tools and response_format together"
    )
    if isinstance(fmt, dict):
        fmt = copy_json_object(fmt, "response_format.json_schema.schema", schemas)
    if fmt is not None:
        payload["format"] = fmt
    forced = None
    if tools is not None:
        tools.check_parameters(schemas)
        forced = build_forced(tools.choice, tools.entries)
        if forced is not None:
            if fmt is not None:
                # Both would be the format; the forced call leaves no content to shape.
                raise invalid("response_format", "cannot be combined with a forced tool_choice")
            # Only the format, no tools: Ollama's tool parsers would fight the grammar.
            payload["format"] = forced.schema
        elif tools.wanted and tools.entries:
            payload["tools"] = tools.entries
    if think is not None:
        payload["think"] = think
    return ChatPlan(
        model=model, stream=stream, include_usage=include_usage, payload=payload, forced=forced
    )


# --- model ---------------------------------------------------------------------------------


def parse_model_name(value: object) -> str:
    """Check a model name's syntax: ``[namespace/]name[:tag]``, nothing that names a host.

    A registry host in the name would make Ollama fetch from that host on a pull, so a
    dot in the namespace, ``//``, ``..``, ``@`` and anything outside ``[A-Za-z0-9._-]``
    are refused.
    """
    if not isinstance(value, str):
        raise invalid("model", "must be a string")
    if not 1 <= len(value) <= MAX_MODEL_NAME_CHARS:
        raise invalid("model", f"must be 1 to {MAX_MODEL_NAME_CHARS} characters long")
    match = _MODEL_NAME_RE.fullmatch(value)
    if match is None or ".." in value:
        raise invalid("model", "must look like name, name:tag or namespace/name:tag")
    namespace = match.group("namespace")
    if namespace is not None and "." in namespace:
        raise invalid("model", "must not name a registry host")
    return value


def _read_model(body: dict[str, Any], defaults: ModelConfig) -> str:
    value = body.get("model")
    name = defaults.name if value is None else parse_model_name(value)
    # The allow-list check (exact match against the models we serve, 404 model_not_found)
    # belongs here, after the syntax check and before anything is queued.
    return name


# --- stream --------------------------------------------------------------------------------


def read_stream(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream")
    if stream is None:
        stream = False
    elif not isinstance(stream, bool):
        raise invalid("stream", "must be a boolean")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise invalid("stream_options", "must be an object")
    if not stream:
        # OpenAI refuses this too; accepting it would hide a client bug.
        raise invalid("stream_options", "is only allowed when stream is true")
    include_usage = options.get("include_usage")
    if include_usage is None:
        return stream, False
    if not isinstance(include_usage, bool):
        raise invalid("stream_options.include_usage", "must be a boolean")
    return stream, include_usage


# --- options -------------------------------------------------------------------------------


def _number(body: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if not is_number(value) or not low <= value <= high:
        raise invalid(key, f"must be a number between {low:g} and {high:g}")
    return float(value)


def read_temperature(body: dict[str, Any], defaults: ModelConfig) -> float:
    value = _number(body, "temperature", 0.0, 2.0)
    return defaults.temperature if value is None else value


def read_top_p(body: dict[str, Any], defaults: ModelConfig) -> float:
    value = _number(body, "top_p", 0.0, 1.0)
    return defaults.top_p if value is None else value


def read_token_limit(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not is_int(value) or not 1 <= value <= MAX_TOKENS_LIMIT:
        raise invalid(key, f"must be an integer between 1 and {MAX_TOKENS_LIMIT}")
    result: int = value
    return result


def _num_predict(body: dict[str, Any], defaults: ModelConfig) -> int | None:
    # max_completion_tokens is the current name, max_tokens the deprecated one; both are
    # validated so a broken value never passes unnoticed.
    legacy = read_token_limit(body, "max_tokens")
    current = read_token_limit(body, "max_completion_tokens")
    return legacy if current is None else current


def read_stop(body: dict[str, Any], defaults: ModelConfig) -> list[str] | None:
    value = body.get("stop")
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
        params = ["stop"]
    elif isinstance(value, list):
        if len(value) > MAX_STOP_SEQUENCES:
            raise invalid("stop", f"must have at most {MAX_STOP_SEQUENCES} entries")
        params = [f"stop[{i}]" for i in range(len(value))]
    else:
        raise invalid("stop", "must be a string or an array of strings")
    for item, param in zip(value, params, strict=True):
        # An empty stop string would end generation before the first token.
        if not isinstance(item, str) or not item:
            raise invalid(param, "must be a non-empty string")
    return value or None


def read_seed(body: dict[str, Any], defaults: ModelConfig) -> int | None:
    value = body.get("seed")
    if value is None:
        return None
    if not is_int(value) or not _SEED_MIN <= value <= _SEED_MAX:
        raise invalid("seed", "must be a 64-bit integer")
    result: int = value
    return result


def _presence_penalty(body: dict[str, Any], defaults: ModelConfig) -> float | None:
    return _number(body, "presence_penalty", -2.0, 2.0)


def _frequency_penalty(body: dict[str, Any], defaults: ModelConfig) -> float | None:
    return _number(body, "frequency_penalty", -2.0, 2.0)


OptionReader = Callable[[dict[str, Any], ModelConfig], object]

# Ollama option name -> (the request fields it reads, reader), in the order the keys
# appear in the payload (after num_ctx, which no request sets). A reader returns None when
# the option is to be left to Ollama's (or the Modelfile's) default.
_OPTION_READERS: tuple[tuple[str, frozenset[str], OptionReader], ...] = (
    ("temperature", frozenset({"temperature"}), read_temperature),
    ("top_p", frozenset({"top_p"}), read_top_p),
    ("num_predict", frozenset({"max_tokens", "max_completion_tokens"}), _num_predict),
    ("stop", frozenset({"stop"}), read_stop),
    ("seed", frozenset({"seed"}), read_seed),
    ("presence_penalty", frozenset({"presence_penalty"}), _presence_penalty),
    ("frequency_penalty", frozenset({"frequency_penalty"}), _frequency_penalty),
)


def _read_options(
    body: dict[str, Any], defaults: ModelConfig, present: AbstractSet[str]
) -> dict[str, Any]:
    # The options every payload carries, from the configuration; a field the client sent
    # overrides its option in place (the keys keep the order above). num_ctx never comes
    # from the client: a different one reloads the model for everyone, and a huge one can
    # exhaust GPU memory.
    options: dict[str, Any] = {
        "num_ctx": defaults.context_length,
        "temperature": defaults.temperature,
        "top_p": defaults.top_p,
    }
    if present:
        for name, fields, reader in _OPTION_READERS:
            if not fields.isdisjoint(present):
                value = reader(body, defaults)
                if value is not None:
                    options[name] = value
    return options


# --- response_format -----------------------------------------------------------------------


def _read_format(value: object) -> str | dict[str, Any] | None:
    """``"json"``, the schema object (still to be walked by the caller), or None."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid("response_format", "must be an object")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            raise invalid("response_format.json_schema", "must be an object with a schema")
        # name and strict only matter to OpenAI; Ollama always enforces the schema.
        schema = spec.get("schema")
        if not isinstance(schema, dict):
            raise invalid("response_format.json_schema.schema", "must be a JSON object")
        return schema
    raise invalid("response_format.type", "must be one of text, json_object, json_schema")


# --- tools ---------------------------------------------------------------------------------


def _tools_wanted(choice: object) -> bool:
    """Whether tools go to Ollama as tools, from ``tool_choice``. A forced call (``required``
    or a named function, checked by ``forced.build_forced``) goes as a ``format`` instead."""
    if choice is None or choice == "auto" or choice == "required" or isinstance(choice, dict):
        return True
    if choice == "none":
        return False
    raise invalid("tool_choice", "must be one of auto, none, required or a named function")


def _tool(tool: object, param: str) -> dict[str, Any]:
    """The tool's Ollama entry, its parameters not yet checked (``check_parameters``)."""
    if not isinstance(tool, dict):
        raise invalid(param, "must be an object")
    if tool.get("type", "function") != "function":
        raise invalid(f"{param}.type", "must be 'function'")
    function = tool.get("function")
    if not isinstance(function, dict):
        raise invalid(f"{param}.function", "must be an object")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise invalid(f"{param}.function.name", "must be a non-empty string")
    out: dict[str, Any] = {"name": name}
    description = optional_str(function, "description", f"{param}.function.description")
    if description is not None:
        out["description"] = description
    parameters = function.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, dict):
            raise invalid(f"{param}.function.parameters", "must be a JSON object")
        out["parameters"] = parameters
    return {"type": "function", "function": out}


@dataclass(slots=True)
class _Tools:
    """The tools after the cheap pass: entries whose parameters are the client's objects
    until ``check_parameters`` walks and copies them."""

    entries: list[dict[str, Any]]
    wanted: bool
    choice: Any = None  # the client's tool_choice, checked by build_forced

    def check_parameters(self, schemas: JsonLimit) -> None:
        for i, entry in enumerate(self.entries):
            function = entry["function"]
            if "parameters" in function:
                param = f"tools[{i}].function.parameters"
                function["parameters"] = copy_json_object(function["parameters"], param, schemas)


def _read_tools(body: dict[str, Any]) -> _Tools | None:
    choice = body.get("tool_choice")
    wanted = _tools_wanted(choice)
    raw = body.get("tools")
    if raw is None:
        if choice == "required" or isinstance(choice, dict):
            raise invalid("tool_choice", "forces a tool call, so tools must not be empty")
        return None
    if not isinstance(raw, list):
        raise invalid("tools", "must be an array")
    if len(raw) > MAX_TOOLS:
        raise invalid("tools", f"must have at most {MAX_TOOLS} entries")
    # Validated even when tool_choice is none: a malformed request is a 400 either way.
    return _Tools([_tool(tool, f"tools[{i}]") for i, tool in enumerate(raw)], wanted, choice)


# --- reasoning -----------------------------------------------------------------------------


def _read_think(body: dict[str, Any]) -> bool | str | None:
    effort = body.get("reasoning_effort")
    param = "reasoning_effort"
    if effort is None:
        reasoning = body.get("reasoning")
        if reasoning is None:
            return None
        if not isinstance(reasoning, dict):
            raise invalid("reasoning", "must be an object")
        effort = reasoning.get("effort")
        param = "reasoning.effort"
        if effort is None:
            return None
    level = _THINK_LEVELS.get(effort) if isinstance(effort, str) else None
    if level is None:
        raise invalid(param, f"must be one of {_THINK_LEVEL_LIST}")
    return level


# --- fields we refuse ----------------------------------------------------------------------


def _modalities_ok(value: object) -> bool:
    # OpenAI knows two modalities: a longer list is refused before it is walked.
    return isinstance(value, list) and len(value) <= 2 and all(item == "text" for item in value)


# Field -> (acceptable value test, why it is refused). These change the answer, so ignoring
# them would hand the client a silently different result.
_REFUSED: tuple[tuple[str, Callable[[object], bool], str], ...] = (
    ("n", lambda v: is_int(v) and v == 1, "must be 1: Ollama returns a single choice"),
    ("logit_bias", lambda v: v == {}, "is not supported: Ollama has no logit bias"),
    ("logprobs", lambda v: v is False, "is not supported by this gateway"),
    ("top_logprobs", lambda v: is_int(v) and v == 0, "is not supported by this gateway"),
    ("audio", lambda v: False, "is not supported: this gateway returns text only"),
    ("modalities", _modalities_ok, "may only contain 'text'"),
    ("prediction", lambda v: False, "is not supported by Ollama"),
    ("functions", lambda v: False, "is not supported: use tools"),
    ("function_call", lambda v: False, "is not supported: use tool_choice"),
)


_REFUSED_FIELDS = frozenset(key for key, _, _ in _REFUSED)
_TOOL_FIELDS = frozenset({"tools", "tool_choice"})
_THINK_FIELDS = frozenset({"reasoning_effort", "reasoning"})
# Every optional field a reader looks at (besides model, messages and stream).
_OPTIONAL_FIELDS = (
    _REFUSED_FIELDS
    | _TOOL_FIELDS
    | _THINK_FIELDS
    | frozenset({"response_format"})
    | frozenset().union(*(fields for _, fields, _ in _OPTION_READERS))
)


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for key, acceptable, why in _REFUSED:
        value = body.get(key)
        if value is not None and not acceptable(value):
            raise invalid(key, why)
