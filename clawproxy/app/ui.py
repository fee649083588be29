"""The built-in web UI: three pages under ``/ui`` and the read-only snapshot they poll.

Theory of operation
-------------------
Static files are served from a manifest built once, when the public route table is built:
every regular file under ``ui_static/`` with a known type becomes one exact route whose
response (bytes, content type, cache policy) is fixed there and then. A request path is only
ever a key into the route table, never joined onto a folder, so ``..``, percent-encodings
(``%2e%2e``, ``%252e``, ``%2f``), backslashes and NUL find nothing: they are paths nobody
registered, and the router answers 404 with no file's contents. While the manifest is built,
symlinks are skipped and names outside ``[A-Za-z0-9._-]`` ignored, so nothing from outside
the package, and no odd route, can enter it (RELIABILITY 3, "static UI"; aiohttp's
CVE-2024-23334 was a static route that followed a symlink out of its root).

Routes: the pages are ``/ui`` (status, also ``/ui/``), ``/ui/chat`` and ``/ui/internals``,
each loadable directly; everything else in ``ui_static/`` is ``/ui/assets/<its path>``.
Every response under ``/ui`` carries the same headers, ``SECURITY_HEADERS``: ``nosniff``, a
CSP that allows this origin only (scripts and styles come from files, never inline) with
``frame-ancestors 'none'``, and ``Referrer-Policy: no-referrer``. The public router
(``app.public.PublicRouter``) sets them on the request before routing, so errors get them
too: a 404 or 405 under ``/ui`` is as inert as a page. The pages and assets never get a
CORS header; the data routes get one only for an origin listed in
``server.cors.allow_origins`` (``policy.crosssite``).

Data: ``/ui/api/stats`` is the admin ``/stats`` snapshot on the public port (live counts,
rate windows, recent requests without prompt text or client addresses, GPUs, model
details, Ollama's reachability and the gateway's status, by the rules in ``services``).
``/ui/api/models`` is the chat page's model picker: the installed models (as ``/v1/models``)
and the default one, so the page never calls the counted public ``/health`` or
``/v1/models``. Both go through ``ClientGuard.check``, so they need an API key when keys
are configured, and through the router's Host and Origin checks, like ``/v1``.

UI requests are not user traffic: a dashboard polling every second must not chart itself or
fill the recent-requests table, so they set ``Request.counted = False`` as admin-port
requests do, and ``LiveState`` leaves them out of its numbers.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from clawproxy.app.admin import stats_body
from clawproxy.app.services import Services
from clawproxy.http.request import Request
from clawproxy.http.router import RouteTable
from clawproxy.http.server import HttpConnection

log = logging.getLogger("clawproxy.ui")

# Where the UI's files live, inside the installed package (tests point it elsewhere). A
# plain path: the package is always installed as files, and importlib.resources (with the
# zipfile and tempfile it pulls in) would cost the idle process about 1 MiB.
STATIC_ROOT = Path(__file__).resolve().parent.parent / "ui_static"
# Page files and the paths they answer on; every other file is under ASSET_PREFIX.
PAGES: dict[str, tuple[bytes, ...]] = {
    "index.html": (b"/ui", b"/ui/"),
    "chat.html": (b"/ui/chat",),
    "internals.html": (b"/ui/internals",),
}
ASSET_PREFIX = b"/ui/assets/"
STATS_PATH = b"/ui/api/stats"
MODELS_PATH = b"/ui/api/models"
# Only these suffixes are served; a file of any other kind (a note, a licence) stays
# package data. Text types say their charset, so no browser has to guess.
CONTENT_TYPES: dict[str, bytes] = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
}
# One path segment: what a URL may carry without escaping; nothing that could mean a parent.
SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
# The package is a few folders deep; a deeper tree is a mistake (or a loop).
MAX_DEPTH = 6

CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    b"frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", CSP),
    (b"referrer-policy", b"no-referrer"),
    # For browsers that predate CSP's frame-ancestors.
    (b"x-frame-options", b"DENY"),
)
# Our own pages and scripts change with every release and keep unversioned URLs: always
# revalidate (a few KiB on a LAN). The vendored library changes only when its note does,
# so a day of caching saves re-sending its 50 KiB on every page load.
CACHE_OWN = b"no-cache"
CACHE_VENDOR = b"public, max-age=86400"
CACHE_SNAPSHOT = b"no-store"
NO_STORE = ((b"cache-control", CACHE_SNAPSHOT),)
VENDOR_DIR = "vendor"


@dataclass(frozen=True, slots=True)
class Asset:
    """One static response, fixed at start-up."""

    body: bytes
    content_type: bytes
    cache_control: bytes

    async def __call__(self, request: Request, conn: HttpConnection) -> None:
        request.counted = False
        headers = ((b"cache-control", self.cache_control),)
        conn.send(request, 200, self.body, content_type=self.content_type, headers=headers)


Found = list[tuple[tuple[str, ...], Path]]


def _files(folder: Path, parts: tuple[str, ...]) -> Found:
    """Regular files under ``folder`` with their relative path; no symlinks, no odd names."""
    found: Found = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        name = entry.name
        if not SAFE_NAME.fullmatch(name):
            continue  # dot files, and names a URL could not carry plainly
        if entry.is_symlink():
            log.warning("UI: not serving symlink %s", entry)
            continue
        if entry.is_dir():
            if len(parts) + 1 < MAX_DEPTH:
                found.extend(_files(entry, (*parts, name)))
        elif entry.is_file():
            found.append(((*parts, name), entry))
    return found


def build_manifest(root: Path) -> dict[bytes, Asset]:
    """Exact URL path -> response, for every servable file under ``root``."""
    manifest: dict[bytes, Asset] = {}
    for parts, entry in _files(root, ()):
        name = parts[-1]
        suffix = name[name.rfind(".") :] if "." in name else ""
        content_type = CONTENT_TYPES.get(suffix)
        if content_type is None:
            continue
        cache = CACHE_VENDOR if parts[0] == VENDOR_DIR else CACHE_OWN
        asset = Asset(entry.read_bytes(), content_type, cache)
        if len(parts) == 1 and name in PAGES:
            for path in PAGES[name]:
                manifest[path] = asset
        elif suffix != ".html":
            manifest[ASSET_PREFIX + "/".join(parts).encode()] = asset
    return manifest


async def ui_stats(svc: Services, request: Request, conn: HttpConnection) -> None:
    request.counted = False
    await svc.check_client(request)
    send_data(request, conn, await stats_body(svc))


async def ui_models(svc: Services, request: Request, conn: HttpConnection) -> None:
    """The chat page's model picker: Ollama's installed models and the default one."""
    request.counted = False
    await svc.check_client(request)
    models = await svc.model_list()
    send_data(request, conn, {"object": "list", "data": models, "default_model": svc.state.model})


def send_data(request: Request, conn: HttpConnection, body: dict[str, Any]) -> None:
    conn.send(request, 200, orjson.dumps(body), headers=NO_STORE)


def ui_routes(svc: Services, root: Path | None = None) -> RouteTable:
    """The UI's part of the public route table."""
    manifest = build_manifest(STATIC_ROOT if root is None else root)
    table: RouteTable = {path: {b"GET": asset, b"HEAD": asset} for path, asset in manifest.items()}
    table[STATS_PATH] = {b"GET": partial(ui_stats, svc)}
    table[MODELS_PATH] = {b"GET": partial(ui_models, svc)}
    return table
