"""Translate an OpenAI Responses request (``POST /v1/responses``) into an Ollama chat request.

Theory of operation
-------------------
The Responses API is the chat API with other names: ``input`` items are messages, a
``function_call`` item is an assistant tool call, a ``function_call_output`` item a tool
message, ``instructions`` a system message, ``text.format`` the ``response_format``. So
``build_responses_plan`` rewrites the request into the equivalent chat body (a dict of fresh
containers) and hands it to ``mapping.build_chat_plan``: every limit and check of chat
(message and part counts, image data URLs, schema sizes, tool arguments, model names)
applies here unchanged, and the Ollama payload is rebuilt from validated fields as there.

What chat would name differently is checked here first, under the Responses name, and
whatever chat still refuses is renamed on its way out (``_rename``): a refusal names the
field the client sent (``input[3].content[0].image_url``, not ``messages[4]...``).

The gateway is stateless: the whole conversation comes in ``input``, and what needs a
store (``previous_response_id``, ``store: true``, ``background``, ``conversation``, stored
prompts) or a tool the gateway does not run (``web_search``, ``file_search``...) is refused
with a 400 naming the field, as is any ``include`` (nothing it asks for exists here). The
request fields a response object repeats (``instructions``, ``tools``, ``metadata``...)
are collected in ``ResponsesPlan.echo`` for ``responses_out``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clawproxy.config import ModelConfig
from clawproxy.errors import InvalidRequest
from clawproxy.openai.forced import ForcedCall
from clawproxy.openai.mapping import MAX_TOOLS, build_chat_plan, read_token_limit
from clawproxy.openai.messages import (
    MAX_CONTENT_PARTS,
    MAX_MESSAGES,
    invalid,
    is_int,
    optional_str,
)

# OpenAI's documented metadata limits: 16 pairs, keys up to 64 and values up to 512 chars.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512

_STATELESS = "is not supported: this gateway is stateless (send the whole conversation in input)"

# Field -> (acceptable value test, why it is refused). Each needs state or a feature the
# gateway does not have; ignoring it would hand the client a silently different answer.
_REFUSED: tuple[tuple[str, Callable[[object], bool], str], ...] = (
    ("previous_response_id", lambda v: False, _STATELESS),
    ("conversation", lambda v: False, _STATELESS),
    ("store", lambda v: v is False, "must be false: this gateway stores no responses"),
    (
        "background",
        lambda v: v is False,
        "is not supported: this gateway answers in the foreground",
    ),
    ("prompt", lambda v: False, "is not supported: this gateway has no stored prompts"),
    ("include", lambda v: v == [], "is not supported: no extra output data exists here"),
    ("top_logprobs", lambda v: is_int(v) and v == 0, "is not supported by this gateway"),
    ("max_tool_calls", lambda v: False, "is not supported: Ollama cannot limit tool calls"),
    ("n", lambda v: is_int(v) and v == 1, "must be 1: Ollama returns a single answer"),
)

_ROLES = ("user", "assistant", "system", "developer")
_ROLE_LIST = ", ".join(_ROLES)
# Responses content part type -> chat's; images are checked by chat (user messages only).
_TEXT_PARTS = frozenset({"input_text", "output_text"})
_TRUNCATIONS = frozenset({"auto", "disabled"})
_VERBOSITIES = frozenset({"low", "medium", "high"})
_SUMMARIES = frozenset({"auto", "concise", "detailed"})
_FORMATS = "text, json_object, json_schema"

# Chat parameter prefixes and what the client called them (see _rename).
_RENAMES: tuple[tuple[str, str], ...] = (
    ("response_format.json_schema.schema", "text.format.schema"),
    ("response_format.json_schema", "text.format"),
    ("response_format", "text.format"),
    ("max_completion_tokens", "max_output_tokens"),
    ("tool_choice.function.name", "tool_choice.name"),
)


@dataclass(frozen=True, slots=True)
class ResponsesPlan:
    """One response: what the client asked for, the ``/api/chat`` body, and the request
    fields every response object repeats (``echo``); ``forced`` as in ``ChatPlan``."""

    model: str
    stream: bool
    payload: dict[str, Any]
    echo: dict[str, Any]
    forced: ForcedCall | None = None


def build_responses_plan(body: object, defaults: ModelConfig) -> ResponsesPlan:
    """Validate a Responses request body; ``InvalidRequest`` (400, ``param``) otherwise."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    for key, acceptable, why in _REFUSED:
        value = body.get(key)
        if value is not None and not acceptable(value):
            raise invalid(key, why)
    chat: dict[str, Any] = {}
    for key in ("model", "stream", "temperature", "top_p"):
        if body.get(key) is not None:
            chat[key] = body[key]
    limit = read_token_limit(body, "max_output_tokens")
    if limit is not None:
        chat["max_completion_tokens"] = limit
    tools, chat_tools = _read_tools(body.get("tools"))
    if chat_tools:
        chat["tools"] = chat_tools
    choice = body.get("tool_choice")
    chat["tool_choice"] = _read_tool_choice(choice)
    if choice is None:
        choice = "auto"
    text_format = _read_text(body.get("text"), chat)
    reasoning = _read_reasoning(body.get("reasoning"), chat)
    parallel = body.get("parallel_tool_calls")
    if parallel is None:
        parallel = True
    elif not isinstance(parallel, bool):
        raise invalid("parallel_tool_calls", "must be a boolean")
    truncation = body.get("truncation")
    if truncation is None:
        truncation = "disabled"
    elif not _one_of(truncation, _TRUNCATIONS):
        raise invalid("truncation", "must be one of auto, disabled")
    metadata = _read_metadata(body.get("metadata"))
    user = optional_str(body, "user", "user")
    instructions = optional_str(body, "instructions", "instructions")
    walk = _InputWalk()
    if instructions:
        walk.add({"role": "system", "content": instructions}, "instructions", "")
    walk.read_input(body.get("input"))
    chat["messages"] = walk.messages
    try:
        plan = build_chat_plan(chat, defaults)
    except InvalidRequest as exc:
        raise walk.rename(exc) from None
    options = plan.payload["options"]
    echo: dict[str, Any] = {
        "background": False,
        "instructions": instructions,
        "max_output_tokens": limit,
        "metadata": metadata,
        "parallel_tool_calls": parallel,
        "previous_response_id": None,
        "reasoning": reasoning,
        "store": False,
        "temperature": options["temperature"],
        "text": {"format": text_format},
        "tool_choice": choice,
        "tools": tools,
        "top_p": options["top_p"],
        "truncation": truncation,
        "user": user,
    }
    return ResponsesPlan(plan.model, plan.stream, plan.payload, echo, plan.forced)


# --- the small fields ----------------------------------------------------------------------


def _one_of(value: object, allowed: frozenset[str]) -> bool:
    # A client's list or object is unhashable: a set lookup would raise TypeError, a 500.
    return isinstance(value, str) and value in allowed


def _read_tool_choice(value: object) -> object:
    """Chat's ``tool_choice`` for the Responses one: ``{"type": "function", "name": N}``
    becomes ``{"type": "function", "function": {"name": N}}``; chat checks the rest."""
    if value is None or value in ("auto", "none", "required"):
        return value
    if isinstance(value, dict) and value.get("type") == "function":
        name = value.get("name")
        if not isinstance(name, str) or not name:
            raise invalid("tool_choice.name", "must be a non-empty string")
        return {"type": "function", "function": {"name": name}}
    # allowed_tools, hosted tools (file_search...), mcp, custom: nothing here runs them.
    raise invalid("tool_choice", "must be one of auto, none, required or a named function")


def _read_tools(value: object) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The tools as a response repeats them, and as chat takes them."""
    if value is None:
        return [], []
    if not isinstance(value, list):
        raise invalid("tools", "must be an array")
    if len(value) > MAX_TOOLS:
        raise invalid("tools", f"must have at most {MAX_TOOLS} entries")
    echoed: list[dict[str, Any]] = []
    chat: list[dict[str, Any]] = []
    for i, tool in enumerate(value):
        param = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise invalid(param, "must be an object")
        kind = tool.get("type")
        if kind != "function":
            # web_search, file_search, computer_use, mcp...: tools OpenAI runs itself.
            raise invalid(f"{param}.type", "must be 'function': this gateway runs no tools")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise invalid(f"{param}.name", "must be a non-empty string")
        description = optional_str(tool, "description", f"{param}.description")
        strict = tool.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise invalid(f"{param}.strict", "must be a boolean")
        function: dict[str, Any] = {"name": name}
        if description is not None:
            function["description"] = description
        parameters = tool.get("parameters")
        if parameters is not None:
            # Checked and copied by chat (tools[i].function.parameters, renamed back).
            function["parameters"] = parameters
        chat.append({"type": "function", "function": function})
        echoed.append(
            {
                "type": "function",
                "name": name,
                "description": description,
                "parameters": parameters,
                "strict": strict if strict is not None else True,
            }
        )
    return echoed, chat


def _read_text(value: object, chat: dict[str, Any]) -> dict[str, Any]:
    """``text.format`` to chat's ``response_format``; the format a response repeats."""
    if value is None:
        return {"type": "text"}
    if not isinstance(value, dict):
        raise invalid("text", "must be an object")
    verbosity = value.get("verbosity")
    if verbosity is not None and not _one_of(verbosity, _VERBOSITIES):
        raise invalid("text.verbosity", "must be one of low, medium, high")
    fmt = value.get("format")
    if fmt is None:
        return {"type": "text"}
    if not isinstance(fmt, dict):
        raise invalid("text.format", "must be an object")
    kind = fmt.get("type")
    if kind == "text":
        return {"type": "text"}
    if kind == "json_object":
        chat["response_format"] = {"type": "json_object"}
        return {"type": "json_object"}
    if kind != "json_schema":
        raise invalid("text.format.type", f"must be one of {_FORMATS}")
    name = optional_str(fmt, "name", "text.format.name")
    description = optional_str(fmt, "description", "text.format.description")
    strict = fmt.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise invalid("text.format.strict", "must be a boolean")
    schema = fmt.get("schema")
    # The schema itself is checked and copied by chat (renamed back to text.format.schema).
    chat["response_format"] = {"type": "json_schema", "json_schema": {"schema": schema}}
    return {
        "type": "json_schema",
        "name": name,
        "description": description,
        "schema": schema,
        "strict": strict,
    }


def _read_reasoning(value: object, chat: dict[str, Any]) -> dict[str, Any]:
    if value is None:
        return {"effort": None, "summary": None}
    if not isinstance(value, dict):
        raise invalid("reasoning", "must be an object")
    summary = value.get("summary")
    if summary is not None and not _one_of(summary, _SUMMARIES):
        raise invalid("reasoning.summary", "must be one of auto, concise, detailed")
    effort = value.get("effort")
    if effort is not None:
        # Chat's reader maps it to Ollama's think and names reasoning.effort itself.
        chat["reasoning"] = {"effort": effort}
    return {"effort": effort, "summary": summary}


def _read_metadata(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid("metadata", "must be an object")
    if len(value) > MAX_METADATA_PAIRS:
        raise invalid("metadata", f"must have at most {MAX_METADATA_PAIRS} pairs")
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY_CHARS:
            raise invalid("metadata", f"keys must be at most {MAX_METADATA_KEY_CHARS} characters")
        if not isinstance(item, str) or len(item) > MAX_METADATA_VALUE_CHARS:
            raise invalid(
                f"metadata.{key}", f"must be a string of at most {MAX_METADATA_VALUE_CHARS} chars"
            )
    return dict(value)


# --- input ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _InputWalk:
    """The chat messages built from ``instructions`` and ``input``, with where each came
    from, so that chat's refusals can be renamed to the client's paths."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    # Per message: the source path and what its chat "content" was called there.
    sources: list[tuple[str, str]] = field(default_factory=list)
    # Per message index: the source path of each of its tool calls.
    calls: dict[int, list[str]] = field(default_factory=dict)
    # Reasoning handed back (a reasoning item), for the next assistant message.
    thinking: list[str] = field(default_factory=list)
    parts_left: int = MAX_CONTENT_PARTS

    def add(self, message: dict[str, Any], source: str, content: str = ".content") -> None:
        self.messages.append(message)
        self.sources.append((source, content))

    def read_input(self, value: object) -> None:
        if isinstance(value, str):
            self.add({"role": "user", "content": value}, "input", "")
            return
        if not isinstance(value, list) or not value:
            raise invalid("input", "must be a string or a non-empty array of input items")
        # Each item is at most one message: a longer array is refused before it is walked.
        if len(value) > MAX_MESSAGES:
            raise invalid("input", f"must have at most {MAX_MESSAGES} items")
        for j, item in enumerate(value):
            param = f"input[{j}]"
            if not isinstance(item, dict):
                raise invalid(param, "must be an object")
            kind = item.get("type", "message")
            if kind == "message":
                self._message(item, param)
            elif kind == "function_call":
                self._function_call(item, param)
            elif kind == "function_call_output":
                self._function_output(item, param)
            elif kind == "reasoning":
                self._reasoning(item, param)
            elif kind == "item_reference":
                raise invalid(f"{param}.type", f"'item_reference' {_STATELESS}")
            elif isinstance(kind, str):
                raise invalid(f"{param}.type", f"{kind!r} is not supported by this gateway")
            else:
                raise invalid(f"{param}.type", "must be a string")

    def _message(self, item: dict[str, Any], param: str) -> None:
        role = item.get("role")
        if role not in _ROLES:
            raise invalid(f"{param}.role", f"must be one of {_ROLE_LIST}")
        content = item.get("content")
        if isinstance(content, list):
            content = self._parts(content, f"{param}.content")
        elif not isinstance(content, str):
            raise invalid(f"{param}.content", "must be a string or an array of content parts")
        message: dict[str, Any] = {"role": role, "content": content}
        if role == "assistant":
            self._take_thinking(message)
        self.add(message, param)

    def _parts(self, parts: list[Any], param: str) -> list[dict[str, Any]]:
        self.parts_left -= len(parts)
        if self.parts_left < 0:
            raise invalid(param, f"takes the request past {MAX_CONTENT_PARTS} content parts")
        out: list[dict[str, Any]] = []
        for k, part in enumerate(parts):
            part_param = f"{param}[{k}]"
            if not isinstance(part, dict):
                raise invalid(part_param, "must be an object")
            kind = part.get("type")
            if _one_of(kind, _TEXT_PARTS):
                out.append({"type": "text", "text": part.get("text")})
            elif kind == "refusal":
                # An earlier answer's refusal is still what the assistant said.
                out.append({"type": "text", "text": part.get("refusal")})
            elif kind == "input_image":
                if part.get("image_url") is None:
                    raise invalid(
                        f"{part_param}.image_url", "is required: send the image as a data: URI"
                    )
                out.append({"type": "image_url", "image_url": part["image_url"]})
            elif isinstance(kind, str):
                raise invalid(
                    f"{part_param}.type",
                    f"{kind!r} is not supported (use input_text, output_text or input_image)",
                )
            else:
                raise invalid(f"{part_param}.type", "must be a string")
        return out

    def _function_call(self, item: dict[str, Any], param: str) -> None:
        call_id = item.get("call_id")
        if not isinstance(call_id, str) or not call_id:
            raise invalid(f"{param}.call_id", "must be a non-empty string")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise invalid(f"{param}.name", "must be a non-empty string")
        call = {
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": item.get("arguments")},
        }
        last = self.messages[-1] if self.messages else None
        index = len(self.messages) - 1
        # Calls that follow an assistant turn belong to it: parallel calls, or text and
        # then calls, are one assistant message to the model's template.
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
            self.calls.setdefault(index, []).append(param)
            return
        message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call]}
        self._take_thinking(message)
        self.add(message, param)
        self.calls[len(self.messages) - 1] = [param]

    def _function_output(self, item: dict[str, Any], param: str) -> None:
        call_id = item.get("call_id")
        if not isinstance(call_id, str) or not call_id:
            raise invalid(f"{param}.call_id", "must be a non-empty string")
        output = item.get("output")
        if isinstance(output, list):
            output = self._parts(output, f"{param}.output")
        elif not isinstance(output, str):
            raise invalid(f"{param}.output", "must be a string or an array of content parts")
        self.add({"role": "tool", "tool_call_id": call_id, "content": output}, param, ".output")

    def _reasoning(self, item: dict[str, Any], param: str) -> None:
        for key in ("summary", "content"):
            parts = item.get(key)
            if parts is None:
                continue
            if not isinstance(parts, list):
                raise invalid(f"{param}.{key}", "must be an array")
            for k, part in enumerate(parts):
                text = part.get("text") if isinstance(part, dict) else None
                if not isinstance(text, str):
                    raise invalid(f"{param}.{key}[{k}].text", "must be a string")
                self.thinking.append(text)

    def _take_thinking(self, message: dict[str, Any]) -> None:
        if self.thinking:
            message["reasoning_content"] = "\n".join(self.thinking)
            self.thinking.clear()

    def rename(self, exc: InvalidRequest) -> InvalidRequest:
        """Chat's refusal, naming the Responses field it came from."""
        param = exc.param
        if param is None:
            return exc
        renamed = self._source_param(param)
        if renamed == param:
            return exc
        message = exc.message
        if message.startswith(param):
            message = renamed + message[len(param) :]
        return InvalidRequest(message, param=renamed, code=exc.code)

    def _source_param(self, param: str) -> str:
        if param == "messages":
            return "input"
        if param.startswith("messages["):
            index, _, rest = param[len("messages[") :].partition("]")
            i = int(index)
            if rest.startswith(".tool_calls["):
                number, _, tail = rest[len(".tool_calls[") :].partition("]")
                source = self.calls[i][int(number)]
                return source + tail.replace(".function", "", 1)
            if rest == ".tool_calls":
                # The request-wide cap on calls, crossed at this message's last call.
                return self.calls[i][-1]
            source, content = self.sources[i]
            if rest.startswith(".content"):
                rest = content + rest[len(".content") :]
            return source + rest
        if param.startswith("tools["):
            return param.replace(".function", "", 1)
        for old, new in _RENAMES:
            if param.startswith(old):
                return new + param[len(old) :]
        return param
