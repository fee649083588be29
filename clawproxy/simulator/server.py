"""``OllamaSimulator``: a fake Ollama that answers like the Go server, with faults on demand.

Theory of operation: an asyncio server (stock loop or uvloop; it installs no policy) whose
``SimConnection`` objects hand complete requests to ``_dispatch``. Dispatch mirrors the
order of Ollama's gin stack: host check, route, method, then the handler. Plain endpoints
answer from ``ModelRegistry``, ``/api/embed`` from ``embed`` (deterministic vectors);
generation requests validate like Ollama's handlers (JSON,
model, keep_alive, think, tools), resolve a ``Reply`` from the queued replies or the
script, pick the fault (``X-Sim-Fault`` header, else the reply's, else ``default_fault``),
and play it with a ``Generation``. Everything observable is recorded by the ``Recorder``
base class.

Generations pass the ``GenerationGate`` first (``num_parallel``/``max_queue``, Ollama's
``OLLAMA_NUM_PARALLEL``/``OLLAMA_MAX_QUEUE``): after validation, as Ollama schedules only
requests it accepted, so an unknown model is still a 404 on a full node. Load and unload
requests (no prompt, no messages) do not take a place. ``models`` may name the installed
models (see ``catalog.installed_models``), so the nodes of a pool can differ; an
``ssl_context`` makes the node serve HTTPS.

The simulator only ever listens where it is told (127.0.0.1 by default) and is meant for
tests, demos and benchmarks, not as a real model server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import orjson

from . import formats
from .catalog import (
    DEFAULT_KEEP_ALIVE_NS,
    DEFAULT_MODELS,
    ModelInfo,
    ModelRegistry,
    installed_models,
    parse_keep_alive,
)
from .connection import ParsedRequest, SimConnection
from .embed import embed_reply
from .gate import BUSY_MESSAGE, GenerationGate
from .gojson import go_dumps
from .records import DEFAULT_MAX_RECORDS, RecordedRequest, Recorder
from .script import Fault, Reply, Script, demo_script
from .stream import Generation
from .validate import RequestError, check_think, expect_field, host_allowed, parse_body
from .wire import JSON_UTF8, TEXT_PLAIN, Lines, error_body, response_head

__all__ = ["OLLAMA_VERSION", "OllamaSimulator"]

_log = logging.getLogger(__name__)

#: The Ollama release whose wire behaviour this simulator imitates (PROTOCOL.md sources).
OLLAMA_VERSION = "0.33.0"
# Room for thousands of benchmark clients connecting at once (the kernel caps it anyway).
LISTEN_BACKLOG = 4096
# Aborted transports report connection_lost on the next loop turns; this is only a backstop.
CLOSE_TIMEOUT_SECONDS = 5.0
_NO_FAULT = Fault()
_LIBRARY_PREFIX = "registry.ollama.ai/library/"

Served = tuple[bool, float | None]


def keep_alive_of(body: dict[str, Any]) -> int:
    """A request's ``keep_alive`` in nanoseconds (``parse_keep_alive``), or Ollama's 400."""
    try:
        return parse_keep_alive(body.get("keep_alive"))
    except ValueError as exc:
        raise RequestError(400, str(exc)) from None


_Handler = Callable[
    ["OllamaSimulator", SimConnection, ParsedRequest, RecordedRequest], Awaitable[Served]
]


class OllamaSimulator(Recorder):
    """A scriptable Ollama stand-in. Use ``async with OllamaSimulator() as sim:``.

    ``token_rate`` is tokens per second per stream (``None``: as fast as possible);
    ``first_token_delay`` is model-load time before each generation's first byte. Both,
    ``script`` and ``default_fault`` may be changed between requests.

    ``models``: the installed models, as ``ModelInfo`` entries or names (default:
    ``DEFAULT_MODELS``). ``num_parallel``: at most this many generations at once, the
    next ``max_queue`` wait in order and any more get Ollama's 503 (``None``: no limit).
    ``ssl_context``: serve HTTPS with this server-side context.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        models: Sequence[str | ModelInfo] | None = None,
        token_rate: float | None = 40.0,
        first_token_delay: float = 0.0,
        script: Script | None = None,
        default_fault: Fault | None = None,
        check_host: bool = True,
        max_records: int = DEFAULT_MAX_RECORDS,
        num_parallel: int | None = None,
        max_queue: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(max_records)
        self.host = host
        self._port = port
        self.registry = ModelRegistry(
            installed_models(models) if models is not None else DEFAULT_MODELS
        )
        self.gate = GenerationGate(num_parallel, max_queue, self._changed)
        self.ssl_context = ssl_context
        self.token_rate = token_rate
        self.first_token_delay = first_token_delay
        self.script: Script = script if script is not None else demo_script
        self.default_fault = default_fault
        self.check_host = check_host
        self._replies: deque[Reply] = deque()
        self._server: asyncio.Server | None = None
        self._connections: set[SimConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_connection_id = 0
        self._closing = False

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening; ``port`` is known afterwards."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._new_connection,
            self.host,
            self._port,
            backlog=LISTEN_BACKLOG,
            ssl=self.ssl_context,
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening, drop every connection and wait until all handlers are gone."""
        self._closing = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for conn in list(self._connections):
            conn.abort()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await self.wait_for(lambda: self.open_connections == 0, CLOSE_TIMEOUT_SECONDS)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> OllamaSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        return self._port

    @property
    def endpoint(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:11434`` (``https://`` with TLS)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "http" if self.ssl_context is None else "https"
        return f"{scheme}://{host}:{self._port}"

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def loaded_models(self) -> list[str]:
        """What ``/api/ps`` would list now."""
        return self.registry.loaded_names()

    @property
    def active_generations(self) -> int:
        """Generations running now: accepted, response not ended, connection not lost."""
        return self.gate.active

    @property
    def peak_generations(self) -> int:
        """The most generations that ran at once since start or ``reset_peak()``."""
        return self.gate.peak

    @property
    def busy_rejections(self) -> int:
        """Generations refused with the 503 because every place and queue slot was taken."""
        return self.gate.rejections

    def reset_peak(self) -> None:
        """Restart ``peak_generations`` from the number running now."""
        self.gate.reset_peak()

    def next_reply(self, *replies: Reply) -> None:
        """Queue replies for the next generations (FIFO), ahead of the script."""
        self._replies.extend(replies)

    def drop_idle_connections(self) -> int:
        """Close every idle keep-alive connection now (a restart, as clients see it)."""
        idle = [conn for conn in self._connections if conn.idle]
        for conn in idle:
            conn.close()
        return len(idle)

    # -- called by SimConnection -------------------------------------------------------

    def _new_connection(self) -> SimConnection:
        self._next_connection_id += 1
        return SimConnection(self, self._next_connection_id)

    def _connection_opened(self, conn: SimConnection) -> None:
        self._connections.add(conn)
        self._count_connection(+1)

    def _connection_closed(self, conn: SimConnection) -> None:
        if conn in self._connections:
            self._connections.discard(conn)
            self._count_connection(-1)

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("simulator handler failed", exc_info=task.exception())

    def _record_request(self, conn: SimConnection, request: ParsedRequest) -> RecordedRequest:
        try:
            parsed = orjson.loads(request.body) if request.body else None
        except orjson.JSONDecodeError:
            parsed = None
        return self._log_request(
            conn.id, request.method, request.target, request.headers, request.body, parsed
        )

    async def _dispatch(
        self, conn: SimConnection, request: ParsedRequest, recorded: RecordedRequest
    ) -> Served:
        idle = self._idle()
        if self.check_host and not host_allowed(self.host, recorded.header("host")):
            # Ollama's host check aborts with an empty 403.
            return self._respond(conn, request, 403, b"", None), idle
        path = request.target.split("?", 1)[0]
        methods = _ROUTES.get(path)
        if methods is None:
            return self._respond(conn, request, 404, b"404 page not found", "text/plain"), idle
        handler = methods.get(request.method)
        if handler is None:
            return self._respond(conn, request, 405, b"405 method not allowed", "text/plain"), idle
        try:
            return await handler(self, conn, request, recorded)
        except RequestError as exc:
            return self._respond(conn, request, exc.status, error_body(exc.message)), idle

    # -- plain endpoints ---------------------------------------------------------------

    def _respond(
        self,
        conn: SimConnection,
        request: ParsedRequest,
        status: int,
        body: bytes,
        content_type: str | None = JSON_UTF8,
    ) -> bool:
        headers = [("Content-Type", content_type)] if content_type else []
        head = response_head(
            status, headers, content_length=len(body), close=not request.keep_alive
        )
        conn.write(head if request.method == "HEAD" else head + body)
        return True

    def _idle(self) -> float | None:
        return self.default_fault.close_idle_after if self.default_fault is not None else None

    async def _root(self, conn: SimConnection, req: ParsedRequest, rec: RecordedRequest) -> Served:
        return self._respond(conn, req, 200, b"Ollama is running", TEXT_PLAIN), self._idle()

    async def _version(
        self, conn: SimConnection, req: ParsedRequest, rec: RecordedRequest
    ) -> Served:
        body = b'{"version":"%s"}' % OLLAMA_VERSION.encode()
        return self._respond(conn, req, 200, body), self._idle()

    async def _tags(self, conn: SimConnection, req: ParsedRequest, rec: RecordedRequest) -> Served:
        body = go_dumps(self.registry.tags_payload())
        return self._respond(conn, req, 200, body), self._idle()

    async def _ps(self, conn: SimConnection, req: ParsedRequest, rec: RecordedRequest) -> Served:
        body = go_dumps(self.registry.ps_payload())
        return self._respond(conn, req, 200, body), self._idle()

    async def _show(self, conn: SimConnection, req: ParsedRequest, rec: RecordedRequest) -> Served:
        body = parse_body(req.body, "ShowRequest")
        name = expect_field(body, "ShowRequest", "model", str, "string") or expect_field(
            body, "ShowRequest", "name", str, "string"
        )
        model = self._known_model(name)
        return self._respond(
            conn, req, 200, go_dumps(self.registry.show_payload(model))
        ), self._idle()

    def _known_model(self, name: str) -> ModelInfo:
        """The installed model ``name`` names, or Ollama's 400 (no name) or 404."""
        if not name:
            raise RequestError(400, "model is required")
        model = self.registry.lookup(name)
        if model is None:
            raise RequestError(404, f"model '{name}' not found")
        return model

    async def _embed(self, conn: SimConnection, req: ParsedRequest, rec: RecordedRequest) -> Served:
        body = parse_body(req.body, "EmbedRequest")
        name = expect_field(body, "EmbedRequest", "model", str, "string")
        keep_alive_ns = keep_alive_of(body)
        model = self._known_model(name)
        options = body.get("options")
        num_ctx = options.get("num_ctx") if isinstance(options, dict) else None
        context_length = num_ctx if isinstance(num_ctx, int) and num_ctx > 0 else None
        async with self._generation_slot(conn):
            reply = embed_reply(model, name, body, context_length=context_length)
            self.registry.load(model, keep_alive_ns or DEFAULT_KEEP_ALIVE_NS, context_length)
            return self._respond(conn, req, 200, reply), self._idle()

    @contextlib.asynccontextmanager
    async def _generation_slot(self, conn: SimConnection) -> AsyncIterator[None]:
        """Hold a place in the gate (waiting for one first), or raise Ollama's 503."""
        slot = self.gate.enter()
        if slot is None:
            raise RequestError(503, BUSY_MESSAGE)
        conn.slot = slot
        try:
            await slot.running()
            yield
        finally:
            slot.release()
            conn.slot = None

    # -- generations -------------------------------------------------------------------

    async def _chat(self, conn: SimConnection, req: ParsedRequest, rec: RecordedRequest) -> Served:
        return await self._generate_or_chat(conn, req, rec, chat=True)

    async def _generate(
        self, conn: SimConnection, req: ParsedRequest, rec: RecordedRequest
    ) -> Served:
        return await self._generate_or_chat(conn, req, rec, chat=False)

    async def _generate_or_chat(
        self, conn: SimConnection, req: ParsedRequest, rec: RecordedRequest, *, chat: bool
    ) -> Served:
        struct = "ChatRequest" if chat else "GenerateRequest"
        body = parse_body(req.body, struct)
        name = expect_field(body, struct, "model", str, "string")
        stream = expect_field(body, struct, "stream", bool, "bool")
        if chat:
            messages = expect_field(body, struct, "messages", list, "[]api.Message") or []
            prompt_chars = sum(len(m.get("content") or "") for m in messages if isinstance(m, dict))
            empty = not messages
        else:
            prompt = expect_field(body, struct, "prompt", str, "string") or ""
            system = expect_field(body, struct, "system", str, "string") or ""
            prompt_chars = len(prompt) + len(system)
            empty = not prompt
        think = check_think(body.get("think"))
        keep_alive_ns = keep_alive_of(body)
        model = self._known_model(name)
        lines = Lines(name, chat=chat)
        idle = self._idle()
        if empty and "keep_alive" in body and keep_alive_ns == 0:
            self.registry.unload(model)
            return self._respond(conn, req, 200, lines.final("unload", {})), idle
        if body.get("tools") and "tools" not in model.capabilities:
            full = model.name if "/" in model.name else _LIBRARY_PREFIX + model.name
            raise RequestError(400, f"{full} does not support tools")
        if "thinking" in model.capabilities:
            if think is None:
                body = {**body, "think": True}
        elif think not in (None, False):
            raise RequestError(400, f'"{name}" does not support thinking')
        options = body.get("options")
        num_ctx = options.get("num_ctx") if isinstance(options, dict) else None
        context_length = num_ctx if isinstance(num_ctx, int) and num_ctx > 0 else None
        if empty:
            # keep_alive 0 still loads for the request and expires right after it.
            self.registry.load(model, keep_alive_ns or DEFAULT_KEEP_ALIVE_NS, context_length)
            return self._respond(conn, req, 200, lines.final("load", {})), idle
        async with self._generation_slot(conn):
            self.registry.load(model, keep_alive_ns or DEFAULT_KEEP_ALIVE_NS, context_length)
            try:
                keep, fault = await self._play(
                    conn, req, rec, body, name, lines, prompt_chars, stream
                )
            finally:
                self.registry.load(model, keep_alive_ns, context_length)
        if fault.close_idle_after is not None:
            idle = fault.close_idle_after
        return keep, idle

    async def _play(
        self,
        conn: SimConnection,
        req: ParsedRequest,
        rec: RecordedRequest,
        body: dict[str, Any],
        name: str,
        lines: Lines,
        prompt_chars: int,
        stream: bool | None,
    ) -> tuple[bool, Fault]:
        """Pick the reply and fault, play them; whether keep-alive holds, and the fault."""
        header_fault = self._header_fault(rec)
        try:
            # A queued reply is played as given (a test's fixed content); the script's
            # text gives way to the document ``format`` asks for, as a grammar would force.
            scripted = not self._replies
            reply = self._replies.popleft() if self._replies else self.script(body)
        except Exception as exc:
            _log.exception("simulator script failed")
            raise RequestError(500, f"simulator script failed: {exc!r}") from None
        fault = header_fault or reply.fault or self.default_fault or _NO_FAULT
        if "format" in body and (scripted or fault.bad_format):
            reply = _formatted(reply, body["format"], fault.bad_format)
        streaming = stream is not False and not fault.short_body
        record = self._begin_stream(rec, name, streaming, None if fault is _NO_FAULT else fault)
        conn.stream = record
        generation = Generation(
            self,
            conn,
            record,
            lines,
            reply,
            fault,
            token_rate=self.token_rate,
            first_delay=self.first_token_delay,
            close=not req.keep_alive,
            prompt_chars=prompt_chars,
        )
        try:
            return await generation.run(), fault
        except Exception:
            _log.exception("simulator generation failed")
            self._finish_stream(record, "fault")
            conn.abort()
            return False, fault
        finally:
            conn.stream = None

    def _header_fault(self, rec: RecordedRequest) -> Fault | None:
        # One fake can serve a whole test module when clients pick faults per request.
        spec = rec.header("x-sim-fault")
        if spec is None:
            return None
        try:
            return Fault.parse(spec)
        except (TypeError, ValueError) as exc:
            raise RequestError(400, f"bad X-Sim-Fault: {exc}") from None


_ROUTES: dict[str, dict[str, _Handler]] = {
    "/": {"GET": OllamaSimulator._root, "HEAD": OllamaSimulator._root},
    "/api/version": {"GET": OllamaSimulator._version, "HEAD": OllamaSimulator._version},
    "/api/tags": {"GET": OllamaSimulator._tags, "HEAD": OllamaSimulator._tags},
    "/api/ps": {"GET": OllamaSimulator._ps},
    "/api/show": {"POST": OllamaSimulator._show},
    "/api/chat": {"POST": OllamaSimulator._chat},
    "/api/generate": {"POST": OllamaSimulator._generate},
    "/api/embed": {"POST": OllamaSimulator._embed},
}


def _formatted(reply: Reply, fmt: object, bad: bool) -> Reply:
    """``reply`` with its text replaced by the JSON ``format`` asks for (or, ``bad``, JSON
    that does not fit it); thinking, counts and the fault stay."""
    if fmt is None or fmt == "":
        return reply
    text = formats.bad_json(fmt) if bad else formats.document(fmt)
    return dataclasses.replace(reply, tokens=formats.pieces(text), done_content="")
