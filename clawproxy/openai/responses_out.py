"""Ollama's ``/api/chat`` NDJSON as an OpenAI Responses answer: SSE events or one object.

Theory of operation
-------------------
Pure code, bytes in and bytes out, one upstream read at a time, like ``reframe`` and
``completions``: ``ResponseStream.feed`` returns the events to write for a read (a whole
number of them, maybe none), ``eof``/``fail`` the events that end a broken stream;
``ResponseAccumulator`` is its non-streaming twin, ``result()`` the ``response`` object. Both
read lines with ``ndjson``'s rules (error lines, tool calls, usage, the length rule), so
both kinds of client see the same answer.

Ollama's lines become output items in the order they come: thinking opens a ``reasoning``
item (its text as the summary), content a ``message`` item, and a change of kind closes
the open item and opens the other; each tool call is a whole ``function_call`` item (Ollama
sends calls whole). The done line closes the open item and the response: ``completed``, or
``incomplete`` with reason ``max_output_tokens`` when Ollama stopped at the token limit.
With a forced tool call (``forced``) the content is the call's JSON document: it is held,
checked at the done line (``ForcedCall.check``) and becomes one ``function_call`` item, or
``response.failed`` when it does not fit the tool's schema. Held, not streamed, even for a
named function: the Responses stream repeats the arguments in ``.done`` events anyway, and
an item once added cannot be retracted.

The stream is the documented event sequence, every event ``event: <type>`` and ``data:``
with a ``sequence_number`` counting from 0: ``response.created`` and
``response.in_progress`` at the first read; per item ``response.output_item.added``, its
part's ``.added``, the text deltas, the text's ``.done``, the part's ``.done`` and
``response.output_item.done``; then ``response.completed`` (or ``.incomplete``) carrying
the whole output. There is no ``[DONE]`` line in this protocol. Any failure (an error
line, a broken or over-long line, a cut, an outside timeout or reset) ends the stream
with ``response.failed`` (status ``failed``, ``error`` with code and message, the items
finished so far), never ``response.completed``.

The protocol repeats the text at the end (the ``.done`` events and the final object), so
the text is held until then: the open item's text as UTF-8 in one ``bytearray`` (a list of
``str`` per token would cost ~60 bytes of headers per token, see ``aggregate``), bounded by
``max_content_bytes`` over the whole answer, as the chat accumulator is. Item ids derive
from the response id and the item's position, so the same upstream bytes give the same
events however they are split.
"""

from __future__ import annotations

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
    line_error,
    message_parts,
    parse_line,
    usage_counts,
)
from clawproxy.openai.aggregate import DEFAULT_MAX_CONTENT_BYTES
from clawproxy.openai.ending import EndsWithError
from clawproxy.openai.forced import ForcedCall, ForcedCallFailed, new_call_id

MESSAGE = "message"
REASONING = "reasoning"
# Output item kind -> the prefix of its id, as OpenAI spells them.
_ID_PREFIXES = {MESSAGE: "msg", REASONING: "rs", "function_call": "fc"}


def usage_object(prompt: int, completion: int) -> dict[str, Any]:
    """The Responses ``usage``, with the detail objects the official client expects."""
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


class _ResponseLines:
    """What both answers share: split Ollama's reads into lines, fail on bad ones, and
    build the output items. With ``emit`` the events go to ``_out`` as they happen."""

    def __init__(
        self,
        response_id: str,
        created_at: int,
        model: str,
        echo: dict[str, Any],
        max_line_bytes: int,
        max_content_bytes: int,
        emit: bool,
        forced: ForcedCall | None,
    ) -> None:
        self.response_id = response_id
        self.created_at = created_at
        self.model = model
        self.echo = echo
        self._id_suffix = response_id.partition("_")[2] or response_id
        self._splitter = LineSplitter(max_line_bytes)
        self._max_content = max_content_bytes
        self._kept = 0
        self._emit = emit
        # A forced tool call (``forced``): the content is the call's JSON, held whole and
        # checked at the done line, then one function_call item (no message item).
        self._forced = forced
        self._forced_text = bytearray()
        self._out: list[bytes] = []
        self._sequence = 0
        self._started = False
        # The finished items, and the one being written (its kind, id and text so far).
        self.output: list[dict[str, Any]] = []
        self._open: str | None = None
        self._open_id = ""
        self._text = bytearray()
        self.done = False
        self.incomplete = False
        self.extra_after_done = False
        self.error: GatewayError | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.deltas = 0

    # -- lines --------------------------------------------------------------------------------

    def _failed(self, message: str, code: str) -> UpstreamFailed:
        self.error = UpstreamFailed(message, code=code)
        self._text.clear()
        return self.error

    def _walk(self, data: bytes) -> None:
        if self.done:
            if data:
                self.extra_after_done = True
            return
        try:
            lines = self._splitter.feed(data)
        except LineTooLong as exc:
            raise self._failed(str(exc), CODE_UPSTREAM_BROKEN) from None
        for line in lines:
            if self.done:
                self.extra_after_done = True
                return
            if line:
                self._line(line)
        if self.done and self._splitter.pending:
            self.extra_after_done = True

    def _line(self, line: bytes) -> None:
        try:
            obj = parse_line(line)
            err = line_error(obj)
            if err is not None:
                raise self._failed(err, CODE_UPSTREAM_ERROR)
            content, thinking, calls = message_parts(obj)
        except InvalidLine:
            raise self._failed(MSG_INVALID_LINE, CODE_UPSTREAM_BROKEN) from None
        self._begin()
        if thinking:
            self._piece(REASONING, thinking)
        if content:
            if self._forced is None:
                self._piece(MESSAGE, content)
            else:
                encoded = content.encode()
                self._keep(len(encoded))
                self._forced_text += encoded
        for call in calls:
            self._close_item()
            self._function_call(call["id"], call["function"])
        if obj.get("done") is True:
            # Ollama's length stop: the answer was cut by max_output_tokens.
            self.incomplete = obj.get("done_reason") == "length"
            self.prompt_tokens, self.completion_tokens = usage_counts(obj)
            self._close_item()
            if self._forced is not None:
                self._forced_call(self._forced)
            self.done = True

    def _forced_call(self, forced: ForcedCall) -> None:
        text = self._forced_text.decode()
        self._forced_text.clear()
        try:
            name, arguments = forced.check(text)
        except ForcedCallFailed as exc:
            self.error = exc
            raise
        self._function_call(new_call_id(), {"name": name, "arguments": arguments})

    def _keep(self, size: int) -> None:
        self._kept += size
        if self._kept > self._max_content:
            raise self._failed(
                f"upstream answer exceeded {self._max_content} bytes", CODE_UPSTREAM_BROKEN
            )

    # -- items --------------------------------------------------------------------------------

    def _item_id(self, kind: str) -> str:
        return f"{_ID_PREFIXES[kind]}_{self._id_suffix}_{len(self.output)}"

    def _piece(self, kind: str, text: str) -> None:
        # orjson refused lone surrogates when it decoded the line: this cannot fail.
        encoded = text.encode()
        self._keep(len(encoded))
        self.deltas += 1
        if self._open != kind:
            self._close_item()
            self._open_item(kind)
        self._text += encoded
        if not self._emit:
            return
        place = {"item_id": self._open_id, "output_index": len(self.output)}
        if kind == MESSAGE:
            fields = {**place, "content_index": 0, "delta": text, "logprobs": []}
            self._event("response.output_text.delta", fields)
        else:
            fields = {**place, "summary_index": 0, "delta": text}
            self._event("response.reasoning_summary_text.delta", fields)

    def _open_item(self, kind: str) -> None:
        self._open = kind
        self._open_id = item_id = self._item_id(kind)
        if not self._emit:
            return
        index = len(self.output)
        place = {"item_id": item_id, "output_index": index}
        if kind == MESSAGE:
            item = {
                "id": item_id,
                "type": MESSAGE,
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            self._event("response.output_item.added", {"output_index": index, "item": item})
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            fields = {**place, "content_index": 0, "part": part}
            self._event("response.content_part.added", fields)
        else:
            item = {"id": item_id, "type": REASONING, "summary": []}
            self._event("response.output_item.added", {"output_index": index, "item": item})
            part = {"type": "summary_text", "text": ""}
            fields = {**place, "summary_index": 0, "part": part}
            self._event("response.reasoning_summary_part.added", fields)

    def _close_item(self) -> None:
        kind = self._open
        if kind is None:
            return
        text = self._text.decode()
        self._text.clear()
        self._open = None
        item_id, index = self._open_id, len(self.output)
        place = {"item_id": item_id, "output_index": index}
        item: dict[str, Any]
        if kind == MESSAGE:
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            status = "incomplete" if self.incomplete else "completed"
            item = {
                "id": item_id,
                "type": MESSAGE,
                "status": status,
                "role": "assistant",
                "content": [part],
            }
            if self._emit:
                fields = {**place, "content_index": 0, "text": text, "logprobs": []}
                self._event("response.output_text.done", fields)
                fields = {**place, "content_index": 0, "part": part}
                self._event("response.content_part.done", fields)
        else:
            summary = {"type": "summary_text", "text": text}
            item = {"id": item_id, "type": REASONING, "summary": [summary]}
            if self._emit:
                fields = {**place, "summary_index": 0, "text": text}
                self._event("response.reasoning_summary_text.done", fields)
                fields = {**place, "summary_index": 0, "part": summary}
                self._event("response.reasoning_summary_part.done", fields)
        self._item_done(index, item)

    def _function_call(self, call_id: str, function: dict[str, Any]) -> None:
        arguments: str = function["arguments"]
        self._keep(len(arguments))
        self.deltas += 1
        item_id, index = self._item_id("function_call"), len(self.output)
        item = {
            "id": item_id,
            "type": "function_call",
            "status": "completed",
            "call_id": call_id,
            "name": function["name"],
            "arguments": arguments,
        }
        if self._emit:
            added = {**item, "status": "in_progress", "arguments": ""}
            self._event("response.output_item.added", {"output_index": index, "item": added})
            place = {"item_id": item_id, "output_index": index}
            self._event("response.function_call_arguments.delta", {**place, "delta": arguments})
            self._event("response.function_call_arguments.done", {**place, "arguments": arguments})
        self._item_done(index, item)

    def _item_done(self, index: int, item: dict[str, Any]) -> None:
        self.output.append(item)
        if self._emit:
            self._event("response.output_item.done", {"output_index": index, "item": item})

    # -- the response object ------------------------------------------------------------------

    def response(self, status: str, **fields: Any) -> dict[str, Any]:
        """The ``response`` object in ``status``; ``fields`` set error, usage and the like."""
        obj: dict[str, Any] = {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "model": self.model,
            "output": self.output if status != "in_progress" else [],
            "usage": None,
            **self.echo,
        }
        obj.update(fields)
        return obj

    def final_response(self) -> dict[str, Any]:
        """The response after the done line: completed, or incomplete at the token limit."""
        usage = usage_object(self.prompt_tokens, self.completion_tokens)
        if self.incomplete:
            reason = {"reason": "max_output_tokens"}
            return self.response("incomplete", incomplete_details=reason, usage=usage)
        return self.response("completed", usage=usage)

    # -- events -------------------------------------------------------------------------------

    def _event(self, kind: str, fields: dict[str, Any]) -> None:
        obj = {"type": kind, **fields, "sequence_number": self._sequence}
        self._sequence += 1
        self._out.append(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n")

    def _begin(self) -> None:
        if self._started:
            return
        self._started = True
        if self._emit:
            created = self.response("in_progress")
            self._event("response.created", {"response": created})
            self._event("response.in_progress", {"response": created})


class ResponseStream(_ResponseLines, EndsWithError):
    """Ollama's chat NDJSON to Responses SSE events: ``feed`` per read.

    After an error line, a broken line or a cut (``eof``/``fail``) the output ends with
    ``response.failed`` and ``error`` is set; ``done`` only after the done line."""

    def __init__(
        self,
        *,
        response_id: str,
        created_at: int,
        model: str,
        echo: dict[str, Any],
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES,
        forced: ForcedCall | None = None,
    ) -> None:
        super().__init__(
            response_id, created_at, model, echo, max_line_bytes, max_content_bytes, True, forced
        )
        self._closed = False

    def feed(self, data: bytes) -> bytes:
        """The events for one upstream read (possibly none)."""
        if self._closed:
            if data:
                self.extra_after_done = True
            return b""
        out = self._out
        try:
            self._walk(data)
        except (UpstreamFailed, ForcedCallFailed) as exc:
            return self._close_with(exc)
        else:
            if self.done:
                final = self.final_response()
                kind = "response.incomplete" if self.incomplete else "response.completed"
                self._event(kind, {"response": final})
                self._closed = True
        result = b"".join(out)
        out.clear()
        return result

    def _close_with(self, exc: GatewayError) -> bytes:
        self.error = exc
        self._closed = True
        self._text.clear()
        self._begin()
        error = {"code": exc.code or CODE_UPSTREAM_BROKEN, "message": exc.message}
        self._event("response.failed", {"response": self.response("failed", error=error)})
        result = b"".join(self._out)
        self._out.clear()
        return result


class ResponseAccumulator(_ResponseLines):
    """Collect Ollama's chat stream; ``result()`` is the ``response`` object."""

    def __init__(
        self,
        *,
        response_id: str,
        created_at: int,
        model: str,
        echo: dict[str, Any],
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES,
        forced: ForcedCall | None = None,
    ) -> None:
        super().__init__(
            response_id, created_at, model, echo, max_line_bytes, max_content_bytes, False, forced
        )

    def feed(self, data: bytes) -> None:
        """Take one upstream read; raise ``UpstreamFailed`` if the stream is unusable."""
        if self.error is not None:
            raise self.error
        self._walk(data)

    def result(self) -> bytes:
        """The ``response`` JSON body; raises if the done line never came."""
        if self.error is not None:
            raise self.error
        if not self.done:
            raise self._failed(MSG_STREAM_CUT, CODE_UPSTREAM_BROKEN)
        return orjson.dumps(self.final_response())
