"""Route tables: exact paths, plus a few prefixes; 404 and 405 otherwise.

Routes match the raw path (percent-encoding untouched), so no encoding of ``..`` can reach
another route, and only what a table names is ever served (nothing under Ollama's
``/api/*``). A path is looked up exactly first; only if no exact route has it, a prefix
route (its prefix ending in ``/``) takes any longer path under it and hands the handler the
raw rest (``Request.path_rest``) to judge: a prefix route can only ever reach its own
handler, whatever the rest says.
"""

from __future__ import annotations

from functools import partial
from importlib import import_module
from typing import Any

from clawproxy.errors import MethodNotAllowed, NotFound
from clawproxy.http.request import Request
from clawproxy.http.server import Handler, HttpConnection

RouteTable = dict[bytes, dict[bytes, Handler]]


class Deferred:
    """A route whose handler's module is imported on the route's first request.

    Why: endpoints most deployments never call (Responses, completions, embeddings) cost
    time to listening and idle memory when imported at start. The
    first request to one pays the import once (a few ms); every later one calls the
    handler directly. ``bound`` is what the handler takes before (request, conn).
    """

    __slots__ = ("_bound", "_handler", "_module", "_name")

    def __init__(self, module: str, name: str, *bound: Any) -> None:
        self._module = module
        self._name = name
        self._bound = bound
        self._handler: Handler | None = None

    async def __call__(self, request: Request, conn: HttpConnection) -> None:
        handler = self._handler
        if handler is None:
            function = getattr(import_module(self._module), self._name)
            handler = self._handler = partial(function, *self._bound)
        await handler(request, conn)


def not_allowed(allowed: list[bytes]) -> MethodNotAllowed:
    allow = b", ".join(allowed)
    return MethodNotAllowed(
        f"method not allowed here; use {allow.decode()}", headers=((b"allow", allow),)
    )


class Router:
    """One port's route table (``http.server.Routes``)."""

    def __init__(self, table: RouteTable, prefixes: RouteTable | None = None) -> None:
        self.table = table
        # Few (one today), so a scan costs less than anything cleverer; only paths no exact
        # route has ever get here.
        self.prefixes = tuple((prefix, methods) for prefix, methods in (prefixes or {}).items())
        if not all(prefix.endswith(b"/") for prefix, _ in self.prefixes):
            raise ValueError("a route prefix ends with '/'")

    def methods_for(self, path: bytes) -> tuple[dict[bytes, Handler], bytes] | None:
        """The methods of the route for ``path`` and the rest a prefix route matched
        (empty for an exact route), or None."""
        methods = self.table.get(path)
        if methods is not None:
            return methods, b""
        for prefix, methods in self.prefixes:
            if len(path) > len(prefix) and path.startswith(prefix):
                return methods, path[len(prefix) :]
        return None

    def resolve(self, request: Request) -> Handler:
        """The handler for ``request``; raises 404 or 405 (and what a subclass checks).

        Synchronous, so the connection awaits the handler itself: one coroutine fewer
        per request than a routing coroutine around it."""
        methods = self.table.get(request.path)
        if methods is None:
            # Off the hot path: the exact routes (chat, health) never get here.
            found = self.methods_for(request.path)
            if found is None:
                raise NotFound(f"no route for {request.path.decode('latin-1')!r}", code="not_found")
            methods, request.path_rest = found
        handler = methods.get(request.method)
        if handler is None:
            if request.method == b"HEAD" and b"GET" in methods:
                # HEAD is GET without the body (RFC 9110 9.3.2): send() leaves it out.
                return methods[b"GET"]
            raise not_allowed(list(methods))
        return handler
