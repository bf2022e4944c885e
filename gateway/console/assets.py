"""The console's files: static assets served as they are, and its two pages filled in."""

from __future__ import annotations

import html
import re
from importlib import resources
from importlib.resources.abc import Traversable

from aiohttp import web

from gateway.errors import RouteNotFound

ASSET_PATH = "/console/"  # where the static files are served: /console/app.js, ...
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_PAGES = ("login.html", "console.html")
_SLOT = re.compile(r"\{\{(\w+)\}\}")

# SECURITY: scripts and styles from these files only (no inline script, no eval, no other
# origin), no framing, forms post here only.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "object-src 'none'",
    )
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
)


def _walk(folder: Traversable, prefix: str = "") -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for entry in folder.iterdir():
        name = prefix + entry.name
        if entry.is_dir():
            found.update(_walk(entry, name + "/"))
        elif entry.is_file():
            found[name] = entry.read_bytes()
    return found


def secure(response: web.Response, cache: str = "no-store") -> web.Response:
    """The console's headers on one of its answers."""
    for name, value in SECURITY_HEADERS:
        response.headers[name] = value
    response.headers["Cache-Control"] = cache
    return response


class Assets:
    """Read once, when the admin app is built: the files of ``static/`` by name.

    SECURITY: only files that were there at start, by exact name, are served: no path from a
    request ever reaches the file system.
    """

    def __init__(self) -> None:
        files = _walk(resources.files("gateway.console") / "static")
        self._pages = {name: files[name].decode() for name in _PAGES}
        self._assets = {
            name: (body, _TYPES[suffix])
            for name, body in files.items()
            if (suffix := name[name.rfind(".") :]) in _TYPES
        }

    def asset(self, name: str) -> web.Response:
        found = self._assets.get(name)
        if found is None:
            raise RouteNotFound()
        body, content_type = found
        response = web.Response(body=body, headers={"Content-Type": content_type})
        return secure(response, "no-cache")

    def page(self, name: str, status: int = 200, **values: str) -> web.Response:
        """A page with its ``{{slots}}`` filled in, every value HTML-escaped."""
        text = _SLOT.sub(lambda m: html.escape(values[m[1]], quote=True), self._pages[name])
        response = web.Response(text=text, status=status, content_type="text/html")
        return secure(response)
