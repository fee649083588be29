"""Translate OpenAI chat ``messages`` into Ollama ``/api/chat`` messages, validating as we go.

Theory of operation: ``translate_messages`` walks the client's array once, in order, and
builds a fresh dict per message from validated fields only; nothing the client sent is
forwarded by reference. A per-role table decides which extras a message may carry (images
on user messages, tool calls and reasoning on assistant messages, tool names on tool
results). Assistant tool-call ids are remembered as the walk goes, so a later ``tool``
message without a ``name`` can still be given Ollama's ``tool_name``.

Every problem raises ``InvalidRequest`` whose ``param`` is the OpenAI-style path
(``messages[2].content[0].image_url.url``) and whose message starts with that path.

Cost: this walk is Python work on the event loop before the request is admitted, and the
body cap alone does not bound it (1 MiB holds ~38,000 empty text parts, 25,000 tool calls
or a 300,000-value argument object: 13, 37 and 81 ms to walk). So every count that costs
work has a limit over the whole request (messages, content parts, tool calls, values in
tool-call arguments), and a client JSON tree is measured by its containers' ``len()``
before it is walked: a tree over its limit is refused without visiting it.

This module also owns the small validation helpers that ``clawproxy.mapping`` shares:
``check_json`` and ``JsonLimit`` bound the client JSON trees there too (tool schemas).
"""

from __future__ import annotations

import binascii
import math
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

import orjson

from clawproxy.errors import InvalidRequest

# A bound on the work one request can cause: the body cap alone would still allow ~100k tiny
# messages, each costing a dict and a template pass in Ollama. 2048 is far above any real
# conversation that fits a local model's context window.
MAX_MESSAGES = 2048
# Content parts in all messages together: a text and an image in every message at
# MAX_MESSAGES. Per message would not do: 148 messages of 256 parts still fill 1 MiB.
MAX_CONTENT_PARTS = 2 * MAX_MESSAGES
# Tool calls in all messages together: each call is answered by a tool message of its own,
# so a conversation within MAX_MESSAGES holds fewer.
MAX_TOOL_CALLS = MAX_MESSAGES
# JSON values in all tool-call arguments together: ~10 a call at MAX_TOOL_CALLS. Arguments
# are small objects (a path, a query, some flags); a long text in one is a single value.
MAX_ARGUMENT_VALUES = 20_000

# Client-supplied JSON trees (schemas, tool arguments) are checked against this depth limit.
# orjson.dumps refuses past 254 levels and the payload wraps them ~5 deep, so without a cap a
# deep (but parseable) tree would turn into a 500 at send time; 64 covers any real schema.
MAX_JSON_DEPTH = 64

# orjson serialises integers in [-2**63, 2**64 - 1]; anything outside would fail on send.
_JSON_INT_MIN = -(2**63)
_JSON_INT_MAX = 2**64 - 1

_ROLES = ("system", "developer", "user", "assistant", "tool")
_ROLE_LIST = ", ".join(_ROLES)

_IMAGE_MIME_TYPES = frozenset({"png", "jpeg", "jpg", "webp", "gif"})

# Text parts of one message are joined with a newline, so that one OpenAI message stays one
# Ollama message (tool calls and role alternation stay attached) and words from adjacent
# parts do not run together.
TEXT_PART_SEPARATOR = "\n"


def invalid(param: str, problem: str) -> InvalidRequest:
    """An ``InvalidRequest`` at ``param`` whose message reads ``"<param> <problem>"``."""
    return InvalidRequest(f"{param} {problem}", param=param)


def is_number(value: object) -> bool:
    """True for a finite int or float; a bool is not a number here although Python says so."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def is_int(value: object) -> bool:
    """True for an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def optional_str(obj: dict[str, Any], key: str, param: str) -> str | None:
    """``obj[key]`` when it is a string, None when absent or null, else a 400."""
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise invalid(param, "must be a string")


class JsonLimit:
    """How many JSON values one kind of client tree may still hold in this request.

    ``what`` names the kind in the refusal, ``scope`` says what the limit covers:
    ``"<param> takes <what> past <limit> values (the limit for <scope>)"``.
    """

    __slots__ = ("left", "limit", "scope", "what")

    def __init__(self, limit: int, what: str, scope: str) -> None:
        self.limit = limit
        self.left = limit
        self.what = what
        self.scope = scope

    def refuse(self, param: str) -> NoReturn:
        """The 400 for the value at ``param`` that crossed the limit."""
        raise invalid(
            param, f"takes {self.what} past {self.limit} values (the limit for {self.scope})"
        )


def check_json(value: object, param: str, limit: JsonLimit) -> None:
    """Check a client JSON tree: within the depth cap, within ``limit``'s count of values,
    and serialisable by orjson. A container's size is counted before its items are
    visited, so a tree over the limit costs one ``len()`` where it crosses, not a walk."""
    # Level by level, without recursion (a deep tree costs no Python stack), and with the
    # count in a local: about half the time of a recursive walk, ~0.1-0.5 us a value.
    left = limit.left - 1
    level = [value]
    depth = 0
    while level:
        below: list[object] = []
        for node in level:
            items: Iterable[Any]
            if isinstance(node, dict):
                items = node.values()
            elif isinstance(node, list):
                items = node
            else:
                _check_scalar(node, param)
                continue
            if not node:
                continue
            if depth >= MAX_JSON_DEPTH:
                raise invalid(param, f"is nested too deeply (limit {MAX_JSON_DEPTH} levels)")
            left -= len(node)
            if left < 0:
                limit.left = left
                limit.refuse(param)
            if items is not node:
                for key in node:
                    if type(key) is not str and not isinstance(key, str):
                        raise invalid(param, "contains an object key that is not a string")
            # The leaves orjson returns are checked inline; containers, and anything of an
            # unusual type (a subclass), a level down.
            for item in items:
                kind = type(item)
                if kind is str or kind is bool or item is None:
                    continue
                if kind is int:
                    if not _JSON_INT_MIN <= item <= _JSON_INT_MAX:
                        raise invalid(param, "contains an integer outside the 64-bit range")
                elif kind is float:
                    if not math.isfinite(item):
                        raise invalid(param, "contains a number that is not finite")
                else:
                    below.append(item)
        level = below
        depth += 1
    limit.left = left


def _check_scalar(value: object, param: str) -> None:
    if value is None or isinstance(value, str | bool):
        return
    if isinstance(value, int):
        if not _JSON_INT_MIN <= value <= _JSON_INT_MAX:
            raise invalid(param, "contains an integer outside the 64-bit range")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise invalid(param, "contains a number that is not finite")
        return
    raise invalid(param, "contains a value that is not JSON")


def copy_json_object(value: object, param: str, limit: JsonLimit) -> dict[str, Any]:
    """A fresh copy of a client JSON object, checked by ``check_json`` first."""
    if not isinstance(value, dict):
        raise invalid(param, "must be a JSON object")
    check_json(value, param, limit)
    # orjson copies in C, at a fraction of a Python walk that builds the containers.
    try:
        out: dict[str, Any] = orjson.loads(orjson.dumps(value))
    except orjson.JSONEncodeError:  # a lone surrogate in a str, from a Python caller
        raise invalid(param, "contains a value that is not JSON") from None
    return out


# --- content -------------------------------------------------------------------------------


def _image_from_url(url: object, param: str) -> str:
    """The base64 payload of a ``data:image/...;base64,`` URI, validated."""
    if not isinstance(url, str):
        raise invalid(param, "must be a string")
    lowered = url[:16].lower()
    if lowered.startswith(("http://", "https://")):
        raise InvalidRequest(
            "image URLs are not supported; send the image as a base64 data: URI", param=param
        )
    header, comma, data = url.partition(",")
    header = header.lower()
    prefix, _, encoding = header.partition(";")
    if not comma or not prefix.startswith("data:image/") or encoding != "base64":
        raise invalid(param, "must be a data:image/<type>;base64,<data> URI")
    mime = prefix[len("data:image/") :]
    if mime not in _IMAGE_MIME_TYPES:
        allowed = ", ".join(sorted(_IMAGE_MIME_TYPES))
        raise invalid(param, f"has unsupported image type {mime!r} (allowed: {allowed})")
    if not data:
        raise invalid(param, "has an empty image")
    # Ollama decodes with Go's padded standard encoding; a payload it would refuse should be
    # a 400 here, not an opaque upstream failure after the request was queued. Python 3.11's
    # strict_mode still accepts surplus '=' at the end, hence the length check.
    try:
        binascii.a2b_base64(data, strict_mode=True)
    except ValueError:  # binascii.Error, and non-ASCII text
        raise invalid(param, "is not valid base64") from None
    if len(data) % 4:
        raise invalid(param, "is not valid base64")
    return data


def _image_part(part: dict[str, Any], param: str) -> str:
    image_url = part.get("image_url")
    # Some clients send the URL directly instead of {"url": ...}; Ollama accepts both.
    if isinstance(image_url, dict):
        return _image_from_url(image_url.get("url"), f"{param}.image_url.url")
    if isinstance(image_url, str):
        return _image_from_url(image_url, f"{param}.image_url")
    raise invalid(f"{param}.image_url", "must be an object with a url")


def _content_parts(
    parts: list[Any], param: str, allow_images: bool, walk: _Walk
) -> tuple[str, list[str]]:
    if not parts:
        raise invalid(param, "must not be an empty array")
    walk.parts_left -= len(parts)
    if walk.parts_left < 0:
        raise invalid(
            param,
            f"takes the request past {MAX_CONTENT_PARTS} content parts "
            "(the limit for all messages together)",
        )
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(parts):
        part_param = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise invalid(part_param, "must be an object")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise invalid(f"{part_param}.text", "must be a string")
            texts.append(text)
        elif kind == "image_url":
            if not allow_images:
                raise invalid(part_param, "is an image; images are only allowed in user messages")
            images.append(_image_part(part, part_param))
        elif isinstance(kind, str):
            raise invalid(
                f"{part_param}.type", f"{kind!r} is not supported (use text or image_url)"
            )
        else:
            raise invalid(f"{part_param}.type", "must be a string")
    return TEXT_PART_SEPARATOR.join(texts), images


def _content(
    msg: dict[str, Any], param: str, walk: _Walk, allow_images: bool, null_ok: bool
) -> tuple[str, list[str]]:
    """The message's text and images; ``null_ok`` when tool calls stand in for content."""
    content = msg.get("content")
    if isinstance(content, str):
        return content, []
    if isinstance(content, list):
        return _content_parts(content, f"{param}.content", allow_images, walk)
    if content is None and null_ok:
        return "", []
    if content is None:
        raise invalid(f"{param}.content", "is required (null only with assistant tool_calls)")
    raise invalid(f"{param}.content", "must be a string or an array of content parts")


# --- tool calls ----------------------------------------------------------------------------


def _arguments(raw: object, param: str, limit: JsonLimit) -> dict[str, Any]:
    if not isinstance(raw, str):
        raise invalid(param, "must be a JSON string")
    # Clients that stream-accumulate a call with no arguments often end up with "".
    if not raw.strip():
        return {}
    try:
        decoded = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise invalid(param, "is not valid JSON") from None
    if not isinstance(decoded, dict):
        raise invalid(param, "must encode a JSON object")
    # Freshly decoded by orjson, so no copy: only the checks (depth, count).
    check_json(decoded, param, limit)
    return decoded


def _tool_call(call: object, param: str, limit: JsonLimit) -> dict[str, Any]:
    if not isinstance(call, dict):
        raise invalid(param, "must be an object")
    kind = call.get("type", "function")
    if kind != "function":
        raise invalid(f"{param}.type", "must be 'function'")
    call_id = optional_str(call, "id", f"{param}.id")
    function = call.get("function")
    if not isinstance(function, dict):
        raise invalid(f"{param}.function", "must be an object")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise invalid(f"{param}.function.name", "must be a non-empty string")
    arguments = _arguments(function.get("arguments"), f"{param}.function.arguments", limit)
    out: dict[str, Any] = {}
    if call_id is not None:
        out["id"] = call_id
    out["function"] = {"name": name, "arguments": arguments}
    return out


def _tool_calls(msg: dict[str, Any], param: str, walk: _Walk) -> list[dict[str, Any]]:
    raw = msg.get("tool_calls")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise invalid(f"{param}.tool_calls", "must be an array")
    walk.calls_left -= len(raw)
    if walk.calls_left < 0:
        raise invalid(
            f"{param}.tool_calls",
            f"takes the request past {MAX_TOOL_CALLS} tool calls "
            "(the limit for all messages together)",
        )
    limit = walk.arguments
    return [_tool_call(call, f"{param}.tool_calls[{j}]", limit) for j, call in enumerate(raw)]


# --- one handler per role ------------------------------------------------------------------


class _Walk:
    """State carried across messages: tool-call id -> function name, for tool results, and
    what the request-wide limits leave."""

    __slots__ = ("arguments", "calls_left", "parts_left", "tool_names")

    def __init__(self) -> None:
        self.tool_names: dict[str, str] = {}
        self.parts_left = MAX_CONTENT_PARTS
        self.calls_left = MAX_TOOL_CALLS
        self.arguments = JsonLimit(
            MAX_ARGUMENT_VALUES, "the tool-call arguments", "all messages together"
        )


def _plain(role: str, msg: dict[str, Any], param: str, walk: _Walk) -> dict[str, Any]:
    _no_tool_calls(msg, param)
    text, _ = _content(msg, param, walk, allow_images=False, null_ok=False)
    return {"role": role, "content": text}


def _user(role: str, msg: dict[str, Any], param: str, walk: _Walk) -> dict[str, Any]:
    _no_tool_calls(msg, param)
    text, images = _content(msg, param, walk, allow_images=True, null_ok=False)
    out: dict[str, Any] = {"role": role, "content": text}
    if images:
        out["images"] = images
    return out


def _assistant(role: str, msg: dict[str, Any], param: str, walk: _Walk) -> dict[str, Any]:
    calls = _tool_calls(msg, param, walk)
    text, _ = _content(msg, param, walk, allow_images=False, null_ok=bool(calls))
    # reasoning_content is the de-facto client field (DeepSeek, vLLM); Ollama's /v1 says
    # reasoning. If a client sends both, the more common one wins.
    thinking = optional_str(msg, "reasoning_content", f"{param}.reasoning_content")
    if thinking is None:
        thinking = optional_str(msg, "reasoning", f"{param}.reasoning")
    out: dict[str, Any] = {"role": role, "content": text}
    if thinking:
        out["thinking"] = thinking
    if calls:
        out["tool_calls"] = calls
        for call in calls:
            if "id" in call:
                walk.tool_names[call["id"]] = call["function"]["name"]
    return out


def _tool(role: str, msg: dict[str, Any], param: str, walk: _Walk) -> dict[str, Any]:
    _no_tool_calls(msg, param)
    text, _ = _content(msg, param, walk, allow_images=False, null_ok=False)
    call_id = optional_str(msg, "tool_call_id", f"{param}.tool_call_id")
    name = optional_str(msg, "name", f"{param}.name")
    if name is None and call_id is not None:
        name = walk.tool_names.get(call_id)
    out: dict[str, Any] = {"role": role, "content": text}
    if name:
        out["tool_name"] = name
    if call_id is not None:
        out["tool_call_id"] = call_id
    return out


def _no_tool_calls(msg: dict[str, Any], param: str) -> None:
    # Dropping them silently would change what the model sees; say so instead.
    if msg.get("tool_calls") is not None:
        raise invalid(f"{param}.tool_calls", "is only allowed on assistant messages")


_Handler = Callable[[str, dict[str, Any], str, _Walk], dict[str, Any]]

# OpenAI role -> (Ollama role, handler). Ollama has no developer role; it is a system prompt.
_ROLE_HANDLERS: dict[str, tuple[str, _Handler]] = {
    "system": ("system", _plain),
    "developer": ("system", _plain),
    "user": ("user", _user),
    "assistant": ("assistant", _assistant),
    "tool": ("tool", _tool),
}


def translate_messages(value: object) -> list[dict[str, Any]]:
    """Validate the request's ``messages`` and return the Ollama ``messages`` array.

    Output keys per message, in Ollama's order: role, content, then when present
    thinking, images, tool_calls, tool_name, tool_call_id.
    """
    if not isinstance(value, list) or not value:
        raise invalid("messages", "must be a non-empty array")
    if len(value) > MAX_MESSAGES:
        raise invalid("messages", f"must have at most {MAX_MESSAGES} entries")
    walk = _Walk()
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(value):
        param = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise invalid(param, "must be an object")
        role = msg.get("role")
        entry = _ROLE_HANDLERS.get(role) if isinstance(role, str) else None
        if entry is None:
            raise invalid(f"{param}.role", f"must be one of {_ROLE_LIST}")
        ollama_role, handler = entry
        out.append(handler(ollama_role, msg, param, walk))
    return out
