"""Exact-path route tables: path -> method -> handler; 404 and 405 otherwise.

Routes match the raw path exactly, so no encoding of ``..`` can reach another route, and
only what a table names is ever served (nothing under Ollama's ``/api/*``).
"""

from __future__ import annotations

from clawproxy.errors import MethodNotAllowed, NotFound
from clawproxy.http.request import Request
from clawproxy.http.server import Handler

RouteTable = dict[bytes, dict[bytes, Handler]]


def not_allowed(allowed: list[bytes]) -> MethodNotAllowed:
    allow = b", ".join(allowed)
    return MethodNotAllowed(
        f"method not allowed here; use {allow.decode()}", headers=((b"allow", allow),)
    )


class Router:
    """One port's route table (``http.server.Routes``)."""

    def __init__(self, table: RouteTable) -> None:
        self.table = table

    def resolve(self, request: Request) -> Handler:
        """The handler for ``request``; raises 404 or 405 (and what a subclass checks).

        Synchronous, so the connection awaits the handler itself: one coroutine fewer
        per request than a routing coroutine around it."""
        methods = self.table.get(request.path)
        if methods is None:
            raise NotFound(f"no route for {request.path.decode('latin-1')!r}", code="not_found")
        handler = methods.get(request.method)
        if handler is None:
            if request.method == b"HEAD" and b"GET" in methods:
                # HEAD is GET without the body (RFC 9110 9.3.2): send() leaves it out.
                return methods[b"GET"]
            raise not_allowed(list(methods))
        return handler
