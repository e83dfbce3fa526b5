"""The gateway's web chat page: ``GET /`` and the few static files it loads.

The page is plain HTML, CSS and JavaScript shipped in ``static/`` (no build
step, no CDN, no external fonts), so it works offline. Every response carries
a Content-Security-Policy that lets the page talk to this origin only: the
browser itself refuses any request to another host, and no inline script can
run even if model output were ever inserted as markup.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

__all__ = ["CONTENT_SECURITY_POLICY", "STATIC_DIR", "STATIC_PREFIX", "add_page_routes"]

STATIC_DIR = Path(__file__).with_name("static")
STATIC_PREFIX = "/static/"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "font-src 'none'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate every time (cheap thanks to the ETag): an upgraded chatkit
    # must never run a stale app.js against a newer page.
    "Cache-Control": "no-cache",
}

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class _Asset:
    body: bytes
    content_type: str
    etag: str


def _load(path: Path) -> _Asset:
    body = path.read_bytes()
    digest = hashlib.sha256(body).hexdigest()[:32]
    return _Asset(body=body, content_type=_CONTENT_TYPES[path.suffix], etag=f'"{digest}"')


def _not_modified(request: web.Request, etag: str) -> bool:
    wanted = request.headers.get("If-None-Match")
    if wanted is None:
        return False
    candidates = {tag.strip().removeprefix("W/") for tag in wanted.split(",")}
    return etag in candidates or "*" in candidates


def _serve(asset: _Asset) -> _Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        headers = {**_SECURITY_HEADERS, "ETag": asset.etag}
        if _not_modified(request, asset.etag):
            return web.Response(status=304, headers=headers)
        headers["Content-Type"] = asset.content_type
        return web.Response(body=asset.body, headers=headers)

    return handler


def add_page_routes(app: web.Application) -> None:
    """Serve the chat page at ``GET /`` and its files under ``/static/``.

    The files are read once, here, so a broken installation fails when the
    app is built rather than on the first visit.
    """
    app.router.add_get("/", _serve(_load(STATIC_DIR / "index.html")))
    for path in sorted(STATIC_DIR.iterdir()):
        if path.suffix in _CONTENT_TYPES and path.name != "index.html":
            app.router.add_get(STATIC_PREFIX + path.name, _serve(_load(path)))
