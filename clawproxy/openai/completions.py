"""OpenAI's legacy Completions (``/v1/completions``) over Ollama's ``/api/generate``.

Theory of operation: ``build_completion_plan`` is a pure function from the decoded request
body to a ``CompletionPlan``, in the style of ``mapping.build_chat_plan``: the payload is
rebuilt from validated fields only, cheap fields first, and fields Ollama cannot honour
(``n``/``best_of`` above 1, ``echo``, ``logprobs``, a ``logit_bias``) are refused with a 400
naming them. Ollama is always asked to stream.

``CompletionStream`` turns Ollama's generate NDJSON (``response`` per line, the done line
with ``done_reason`` and the counts) into ``text_completion`` SSE chunks, one read at a
time; ``CompletionAccumulator`` collects it into one ``text_completion`` body, bounded by
``aggregate.DEFAULT_MAX_CONTENT_BYTES``. Both read lines with ``ndjson``'s rules (error
lines, usage, ``finish_reason``), so both kinds of client see the same answer. Plain orjson
rendering: this endpoint has no per-token fast path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from clawproxy.config import ModelConfig
from clawproxy.errors import GatewayError, InvalidRequest, UpstreamFailed
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
    parse_line,
    usage_counts,
)
from clawproxy.openai.aggregate import DEFAULT_MAX_CONTENT_BYTES
from clawproxy.openai.ending import EndsWithError
from clawproxy.openai.mapping import (
    parse_model_name,
    read_seed,
    read_stop,
    read_stream,
    read_temperature,
    read_token_limit,
    read_top_p,
)
from clawproxy.openai.messages import invalid, is_int
from clawproxy.openai.reframe import error_event

_DONE_EVENT = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class CompletionPlan:
    """One completion: what the client asked for and the whole ``/api/generate`` body."""

    model: str
    stream: bool
    include_usage: bool
    payload: dict[str, Any]


# Field -> (acceptable value test, why it is refused).
_REFUSED: tuple[tuple[str, Any, str], ...] = (
    ("n", lambda v: is_int(v) and v == 1, "must be 1: Ollama returns a single choice"),
    ("best_of", lambda v: is_int(v) and v == 1, "must be 1: Ollama cannot rank candidates"),
    ("echo", lambda v: v is False, "is not supported: Ollama cannot echo the prompt"),
    ("logprobs", lambda v: False, "is not supported: Ollama returns no log probabilities"),
    ("logit_bias", lambda v: v == {}, "is not supported: Ollama has no logit bias"),
)


def build_completion_plan(body: object, defaults: ModelConfig) -> CompletionPlan:
    """Validate an OpenAI completions body; ``InvalidRequest`` (400, ``param``) otherwise."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    for key, acceptable, why in _REFUSED:
        value = body.get(key)
        if value is not None and not acceptable(value):
            raise invalid(key, why)
    value = body.get("model")
    model = defaults.name if value is None else parse_model_name(value)
    stream, include_usage = read_stream(body)
    options: dict[str, Any] = {
        "num_ctx": defaults.context_length,
        "temperature": read_temperature(body, defaults),
        "top_p": read_top_p(body, defaults),
    }
    # The same readers as chat's, so a value is valid or not on both endpoints.
    for key, value in (
        ("num_predict", read_token_limit(body, "max_tokens")),
        ("stop", read_stop(body, defaults)),
        ("seed", read_seed(body, defaults)),
    ):
        if value is not None:
            options[key] = value
    payload: dict[str, Any] = {
        "model": model,
        "prompt": _read_prompt(body.get("prompt")),
        "stream": True,
        "options": options,
    }
    suffix = body.get("suffix")
    if suffix is not None:
        if not isinstance(suffix, str):
            raise invalid("suffix", "must be a string")
        if suffix:
            payload["suffix"] = suffix
    return CompletionPlan(model, stream, include_usage, payload)


def _read_prompt(value: object) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise invalid(
            "prompt", "must be a string or an array of one string: Ollama completes one prompt"
        )
    return value


# --- the replies -----------------------------------------------------------------------------


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class _GenerateLines:
    """What both replies share: split Ollama's reads into lines, fail on bad ones, and
    note the done line's reason and counts. ``_text`` receives each piece of text."""

    def __init__(self, completion_id: str, created: int, model: str, max_line_bytes: int):
        self.head = {"id": completion_id, "object": "text_completion", "created": created}
        self.model = model
        self._splitter = LineSplitter(max_line_bytes)
        self.done = False
        self.extra_after_done = False
        self.error: GatewayError | None = None
        self.finish_reason = "stop"
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.deltas = 0

    def _lines(self, data: bytes) -> list[bytes]:
        if self.done:
            if data:
                self.extra_after_done = True
            return []
        try:
            lines = self._splitter.feed(data)
        except LineTooLong as exc:
            raise self._failed(str(exc), CODE_UPSTREAM_BROKEN) from None
        return lines

    def _failed(self, message: str, code: str) -> UpstreamFailed:
        error = self.error = UpstreamFailed(message, code=code)
        return error

    def _walk(self, data: bytes) -> None:
        for line in self._lines(data):
            if self.done:
                self.extra_after_done = True
                return
            if not line or line == b"\r":
                continue
            try:
                obj = parse_line(line)
            except InvalidLine:
                raise self._failed(MSG_INVALID_LINE, CODE_UPSTREAM_BROKEN) from None
            err = line_error(obj)
            if err is not None:
                raise self._failed(err, CODE_UPSTREAM_ERROR)
            text = obj.get("response")
            if isinstance(text, str) and text:
                self.deltas += 1
                self._text(text)
            if obj.get("done") is True:
                self.finish_reason = finish_reason(obj.get("done_reason"), False)
                self.prompt_tokens, self.completion_tokens = usage_counts(obj)
                self.done = True
        if self.done and self._splitter.pending:
            self.extra_after_done = True

    def _text(self, text: str) -> None:
        raise NotImplementedError


class CompletionStream(_GenerateLines, EndsWithError):
    """Ollama's generate NDJSON to ``text_completion`` SSE chunks: ``feed`` per read.

    After an error line, a broken line or a cut (``eof``/``fail``) the output is one SSE
    error event and ``error`` is set; ``[DONE]`` only follows the done line."""

    def __init__(
        self,
        *,
        completion_id: str,
        created: int,
        model: str,
        include_usage: bool,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        super().__init__(completion_id, created, model, max_line_bytes)
        self.include_usage = include_usage
        self._out: list[bytes] = []
        self._closed = False

    def _event(self, obj: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def _chunk(self, text: str, reason: str | None) -> bytes:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        return self._event({**self.head, "model": self.model, "choices": [choice]})

    def _text(self, text: str) -> None:
        self._out.append(self._chunk(text, None))

    def feed(self, data: bytes) -> bytes:
        if self._closed:
            if data:
                self.extra_after_done = True
            return b""
        out = self._out
        try:
            self._walk(data)
        except UpstreamFailed as exc:
            out.append(self._close_with(exc))
        else:
            if self.done:
                out.append(self._chunk("", self.finish_reason))
                if self.include_usage:
                    usage = _usage(self.prompt_tokens, self.completion_tokens)
                    obj = {**self.head, "model": self.model, "choices": [], "usage": usage}
                    out.append(self._event(obj))
                out.append(_DONE_EVENT)
                self._closed = True
        result = b"".join(out)
        out.clear()
        return result

    def _close_with(self, exc: GatewayError) -> bytes:
        self.error = exc
        self._closed = True
        return error_event(exc.message, exc.code or CODE_UPSTREAM_BROKEN)


class CompletionAccumulator(_GenerateLines):
    """Collect Ollama's generate stream; ``result()`` is the ``text_completion`` body."""

    def __init__(
        self,
        *,
        completion_id: str,
        created: int,
        model: str,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES,
    ) -> None:
        super().__init__(completion_id, created, model, max_line_bytes)
        self._parts: list[str] = []
        self._kept = 0
        self._max = max_content_bytes

    def _text(self, text: str) -> None:
        # UTF-8 bytes are at most 4 per character; the count is a bound, not an exact size.
        self._kept += len(text)
        if self._kept > self._max:
            self._parts.clear()
            raise self._failed(f"upstream answer exceeded {self._max} bytes", CODE_UPSTREAM_BROKEN)
        self._parts.append(text)

    def feed(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        self._walk(data)

    def result(self) -> bytes:
        if self.error is not None:
            raise self.error
        if not self.done:
            raise self._failed(MSG_STREAM_CUT, CODE_UPSTREAM_BROKEN)
        choice = {
            "index": 0,
            "text": "".join(self._parts),
            "finish_reason": self.finish_reason,
            "logprobs": None,
        }
        usage = _usage(self.prompt_tokens, self.completion_tokens)
        return orjson.dumps({**self.head, "model": self.model, "choices": [choice], "usage": usage})
