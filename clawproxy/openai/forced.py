"""Forced tool calls (``tool_choice`` ``"required"`` or a named function) on top of Ollama.

Theory of operation
-------------------
Ollama ignores ``tool_choice``: given ``tools`` the model may answer in plain text, and no
setting makes it call one. What Ollama does enforce is ``format``: a JSON schema becomes a
grammar, and sampling cannot leave it (PROTOCOL 1.6). So a forced call is asked for as
structured output and the JSON the model writes *is* the call:

* a named function: ``format`` is that function's ``parameters``; the document is its
  arguments;
* ``"required"``: ``format`` is ``{"anyOf": [one {"name": {"const": N}, "arguments":
  <parameters>} object per tool]}``; ``name`` picks the function, ``arguments`` are its
  arguments.

``tools`` are not sent with the format: Ollama's tool parsers look at the output for calls
of their own (and some hold text back while deciding, ollama#9092), which would fight the
grammar, and a model without the ``tools`` capability can still fill a schema.

The answer is checked before it becomes a call (``ForcedCall.check``): it must parse as
JSON, name a tool that was offered, and have an object of arguments that holds the
schema's required keys, no key the schema closes out, and the declared JSON type (and
``enum``/``const``) on each top-level value. A grammar makes a mismatch unlikely, not
impossible (a cut at ``max_tokens``, a server that ignores ``format``), and a made-up call
is worse than an error: a mismatch is ``ForcedCallFailed`` (502), never a guessed call, and
never a node failure (the node did its job; the model's output did not fit).

Streaming: for a named function the name is known up front, so the arguments stream as
``function.arguments`` deltas as the tokens come, and the check runs at Ollama's done line
(a mismatch is then an error event and no ``[DONE]``, like any mid-stream failure). For
``"required"`` the arguments are a part of the document that can only be cut out once it
is whole (``name`` might come after them; escapes and whitespace make a prefix scan
fragile), and streamed pieces cannot be taken back if the name turns out wrong, so the call
is sent in one piece after the check. Ordinary chat never comes here: the choice of
re-framer is made once per request, and ``reframe.SseReframer`` is untouched.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import orjson

from clawproxy.errors import GatewayError, UpstreamFailed
from clawproxy.ollama.ndjson import (
    CODE_UPSTREAM_BROKEN,
    CODE_UPSTREAM_ERROR,
    DEFAULT_MAX_LINE_BYTES,
    MSG_INVALID_LINE,
    MSG_STREAM_CUT,
    InvalidLine,
    LineSplitter,
    LineTooLong,
    finish_reason,
    line_error,
    message_parts,
    parse_line,
    usage_counts,
)
from clawproxy.openai.ending import EndsWithError
from clawproxy.openai.messages import invalid
from clawproxy.openai.reframe import chunk_prefix, error_event, reasoning_keys

# Same bound as the chat accumulator (aggregate.DEFAULT_MAX_CONTENT_BYTES): the document is
# held whole until it is checked.
DEFAULT_MAX_CONTENT_BYTES = 16 << 20
CODE_MISMATCH = "tool_call_mismatch"
MSG_MISMATCH = "the model's output did not match the tool's schema"
# A function without parameters takes an empty object, as OpenAI treats it.
_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
# JSON schema type name -> the test of a decoded value (a bool is not a number here).
_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: (
        not isinstance(v, bool)
        and (isinstance(v, int) or (isinstance(v, float) and v.is_integer()))
    ),
    "number": lambda v: not isinstance(v, bool) and isinstance(v, int | float),
}
_DONE_EVENT = b"data: [DONE]\n\n"
_CHUNK_TAIL = b',"finish_reason":null}]}\n\n'


class ForcedCallFailed(GatewayError):
    """The model's forced-call output is not a valid call of an offered tool (502).

    Not one of ``errors.UPSTREAM_ERRORS``: Ollama answered, the node is healthy."""

    status = 502
    err_type = "api_error"
    default_code = CODE_MISMATCH


def new_call_id() -> str:
    # OpenAI's shape; names a call, guards nothing (see relay.new_completion_id).
    return f"call_{random.getrandbits(96):024x}"


@dataclass(frozen=True, slots=True)
class ForcedCall:
    """A forced call: ``name`` is the function (None: any of ``tools``), ``schema`` the
    ``format`` sent to Ollama, ``tools`` each offered function's parameters schema."""

    name: str | None
    schema: dict[str, Any]
    tools: dict[str, dict[str, Any]]

    def check(self, text: str) -> tuple[str, str]:
        """``(name, arguments JSON)`` of the call ``text`` makes; ``ForcedCallFailed``."""
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise mismatch("it is not valid JSON") from None
        if self.name is not None:
            name, arguments = self.name, doc
            raw = text.strip()
        else:
            if not isinstance(doc, dict) or set(doc) != {"name", "arguments"}:
                raise mismatch("it is not an object of name and arguments")
            name, arguments = doc["name"], doc["arguments"]
            if not isinstance(name, str) or name not in self.tools:
                raise mismatch("it names no tool that was offered")
            raw = ""
        problem = arguments_problem(arguments, self.tools[name])
        if problem is not None:
            raise mismatch(problem)
        return name, raw or orjson.dumps(arguments).decode()


def mismatch(why: str) -> ForcedCallFailed:
    return ForcedCallFailed(f"{MSG_MISMATCH}: {why}")


def arguments_problem(arguments: object, parameters: dict[str, Any]) -> str | None:
    """Why ``arguments`` fail ``parameters`` at the top level, or None when they pass."""
    if not isinstance(arguments, dict):
        return "the arguments are not a JSON object"
    required = parameters.get("required")
    if isinstance(required, list):
        for key in required:
            if isinstance(key, str) and key not in arguments:
                return f"the required argument {key!r} is missing"
    properties = parameters.get("properties")
    if not isinstance(properties, dict):
        properties = {}
    closed = parameters.get("additionalProperties") is False
    for key, value in arguments.items():
        spec = properties.get(key)
        if not isinstance(spec, dict):
            if closed:
                return f"the argument {key!r} is not in the schema"
            continue
        if not _value_fits(value, spec):
            return f"the argument {key!r} has the wrong type or value"
    return None


def _value_fits(value: object, spec: dict[str, Any]) -> bool:
    kind = spec.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if isinstance(kind, str) else []
    tests = [_TYPES[k] for k in kinds if k in _TYPES]
    if tests and not any(test(value) for test in tests):
        return False
    if "const" in spec and spec["const"] != value:
        return False
    enum = spec.get("enum")
    return not (isinstance(enum, list) and value not in enum)


def build_forced(choice: object, entries: list[dict[str, Any]]) -> ForcedCall | None:
    """The forced call chat's ``tool_choice`` asks for over ``entries`` (Ollama-shaped
    tools, parameters already checked), None for ``auto``/``none``; 400 otherwise."""
    tools = {
        e["function"]["name"]: e["function"].get("parameters") or _EMPTY_PARAMETERS for e in entries
    }
    if choice == "required":
        if not tools:
            raise invalid("tool_choice", "'required' needs at least one tool in tools")
        branches = [
            {
                "type": "object",
                "properties": {"name": {"const": name}, "arguments": parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for name, parameters in tools.items()
        ]
        schema = branches[0] if len(branches) == 1 else {"anyOf": branches}
        return ForcedCall(None, schema, tools)
    if not isinstance(choice, dict):
        return None
    function = choice.get("function")
    if choice.get("type") != "function" or not isinstance(function, dict):
        raise invalid("tool_choice", "must name a function: {type: function, function: {name}}")
    name = function.get("name")
    if not isinstance(name, str) or name not in tools:
        raise invalid("tool_choice.function.name", "must name a function in tools")
    return ForcedCall(name, tools[name], tools)


class _ForcedLines:
    """What both chat answers share: Ollama's lines, the document held, the check."""

    def __init__(self, forced: ForcedCall, max_line_bytes: int, max_content_bytes: int) -> None:
        self.forced = forced
        self.call_id = new_call_id()
        self._splitter = LineSplitter(max_line_bytes)
        self._max_content = max_content_bytes
        self._text = bytearray()
        self._thinking: list[str] = []
        self._kept = 0
        self.done = False
        self.extra_after_done = False
        self.error: GatewayError | None = None
        self.finish_reason: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.deltas = 0
        # The call, once checked.
        self.name = ""
        self.arguments = ""

    def _walk(self, data: bytes) -> None:
        """Every line of one read; raises ``GatewayError`` (and keeps it in ``error``)."""
        if self.done:
            if data:
                self.extra_after_done = True
            return
        try:
            lines = self._splitter.feed(data)
        except LineTooLong as exc:
            raise self._failed(UpstreamFailed(str(exc), code=CODE_UPSTREAM_BROKEN)) from None
        for line in lines:
            if self.done:
                self.extra_after_done = True
                return
            if line and line != b"\r":
                self._line(line)
        if self.done and self._splitter.pending:
            self.extra_after_done = True

    def _failed(self, exc: GatewayError) -> GatewayError:
        self.error = exc
        self._text.clear()
        self._thinking.clear()
        return exc

    def _line(self, line: bytes) -> None:
        try:
            obj = parse_line(line)
            err = line_error(obj)
            if err is not None:
                raise self._failed(UpstreamFailed(err, code=CODE_UPSTREAM_ERROR))
            content, thinking, _ = message_parts(obj)
        except InvalidLine:
            raise self._failed(
                UpstreamFailed(MSG_INVALID_LINE, code=CODE_UPSTREAM_BROKEN)
            ) from None
        if thinking:
            self._keep(len(thinking))
            self._on_thinking(thinking)
        if content:
            encoded = content.encode()
            self._keep(len(encoded))
            self._text += encoded
            self._on_content(content)
        if obj.get("done") is True:
            self.prompt_tokens, self.completion_tokens = usage_counts(obj)
            try:
                self.name, self.arguments = self.forced.check(self._text.decode())
            except ForcedCallFailed as exc:
                raise self._failed(exc) from None
            self.finish_reason = finish_reason(obj.get("done_reason"), True)
            self.done = True

    def _keep(self, size: int) -> None:
        self._kept += size
        if self._kept > self._max_content:
            message = f"upstream answer exceeded {self._max_content} bytes"
            raise self._failed(UpstreamFailed(message, code=CODE_UPSTREAM_BROKEN))

    def _on_thinking(self, text: str) -> None:
        self._thinking.append(text)

    def _on_content(self, text: str) -> None:
        pass


class ForcedReframer(_ForcedLines, EndsWithError):
    """A forced call's Ollama stream as ``chat.completion.chunk`` SSE (``SseReframer``'s
    interface: ``feed`` per read, ``eof``, ``fail``; ``error`` once failed)."""

    def __init__(
        self,
        *,
        forced: ForcedCall,
        completion_id: str,
        created: int,
        model: str,
        include_usage: bool,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES,
        reasoning_field: str = "reasoning_content",
    ) -> None:
        super().__init__(forced, max_line_bytes, max_content_bytes)
        self._stream_pre = chunk_prefix(completion_id, created, model)
        self._delta_pre = self._stream_pre + b'{"index":0,"delta":'
        self._reasoning = reasoning_keys(reasoning_field)
        self._include_usage = include_usage
        self._out: list[bytes] = []
        self._started = False
        self._opened = False
        self._closed = False

    def feed(self, data: bytes) -> bytes:
        """All SSE bytes one upstream read produces (possibly ``b""``)."""
        if self._closed:
            if data and self.done:
                self.extra_after_done = True
            return b""
        if not self._started:
            self._started = True
            self._delta({"role": "assistant", "content": None})
        try:
            self._walk(data)
        except GatewayError as exc:
            return self._close_with(exc)
        if self.done:
            self._finish()
        out = b"".join(self._out)
        self._out.clear()
        return out

    def _close_with(self, exc: GatewayError) -> bytes:
        self.error = exc
        self._closed = True
        self._out.append(error_event(exc.message, exc.code or CODE_UPSTREAM_BROKEN))
        out = b"".join(self._out)
        self._out.clear()
        return out

    def _delta(self, delta: dict[str, Any]) -> None:
        self._out.append(self._delta_pre + orjson.dumps(delta) + _CHUNK_TAIL)

    def _call_delta(self, function: dict[str, str], head: bool) -> None:
        call: dict[str, Any] = {"index": 0}
        if head:
            call.update(id=self.call_id, type="function")
        call["function"] = function
        self._delta({"tool_calls": [call]})
        self.deltas += 1

    def _on_thinking(self, text: str) -> None:
        first, second = self._reasoning
        delta = {first.decode(): text}
        if second is not None:
            delta[second.decode()] = text
        self._delta(delta)
        self.deltas += 1

    def _on_content(self, text: str) -> None:
        name = self.forced.name
        if name is None:
            return  # "required": the call goes out whole once checked
        if not self._opened:
            self._opened = True
            self._call_delta({"name": name, "arguments": ""}, True)
        self._call_delta({"arguments": text}, False)

    def _finish(self) -> None:
        if not self._opened:
            self._opened = True
            self._call_delta({"name": self.name, "arguments": self.arguments}, True)
        reason = self.finish_reason or "tool_calls"
        self._out.append(self._delta_pre + b'{},"finish_reason":"' + reason.encode() + b'"}]}\n\n')
        if self._include_usage:
            usage = _usage(self.prompt_tokens, self.completion_tokens)
            self._out.append(self._stream_pre + b'],"usage":' + orjson.dumps(usage) + b"}\n\n")
        self._out.append(_DONE_EVENT)
        self._closed = True


class ForcedAccumulator(_ForcedLines):
    """A forced call's Ollama stream as one ``chat.completion`` (``ChatAccumulator``'s
    interface: ``feed`` per read, ``result`` at the end)."""

    def __init__(
        self,
        *,
        forced: ForcedCall,
        completion_id: str,
        created: int,
        model: str,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES,
        reasoning_field: str = "reasoning_content",
    ) -> None:
        super().__init__(forced, max_line_bytes, max_content_bytes)
        self._id = completion_id
        self._created = created
        self._model = model
        self._reasoning = reasoning_keys(reasoning_field)

    def feed(self, data: bytes) -> None:
        """Take one upstream read; raise ``GatewayError`` if the answer is unusable."""
        if self.error is not None:
            raise self.error
        self._walk(data)

    def result(self) -> bytes:
        """The ``chat.completion`` body; raises if the done line never came."""
        if self.error is not None:
            raise self.error
        if not self.done:
            raise self._failed(UpstreamFailed(MSG_STREAM_CUT, code=CODE_UPSTREAM_BROKEN))
        message: dict[str, Any] = {"role": "assistant", "content": None}
        if self._thinking:
            thinking = "".join(self._thinking)
            for key in self._reasoning:
                if key is not None:
                    message[key.decode()] = thinking
        call = {"name": self.name, "arguments": self.arguments}
        message["tool_calls"] = [{"id": self.call_id, "type": "function", "function": call}]
        body = {
            "id": self._id,
            "object": "chat.completion",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
            "usage": _usage(self.prompt_tokens, self.completion_tokens),
        }
        return orjson.dumps(body)


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
