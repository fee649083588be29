"""The admin listener's routes (``gateway.debug_port``, loopback by default).

Theory of operation: the admin port runs the same ``HttpConnection`` as the public port,
with its own route table, so every limit and deadline applies to it too. It is never on
the user path: nginx exposes only the public port. Its health reports the live counts that
operators and the UI read from ``LiveState``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from .routes import Router

if TYPE_CHECKING:
    from .gateway import Gateway
    from .server import HttpConnection, Request


async def admin_health(gw: Gateway, request: Request, conn: HttpConnection) -> None:
    """Gateway status with the live counts; never asks Ollama."""
    snapshot = gw.state.snapshot(gw.loop.time())
    snapshot["status"] = "draining" if gw.draining else "ok"
    conn.send(request, 200, orjson.dumps(snapshot))


ADMIN = Router({b"/health": {b"GET": admin_health}})
