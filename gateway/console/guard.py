"""The console's CSRF defences: a same-origin Origin (or Referer) and the session's CSRF token."""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from aiohttp import web

from gateway.errors import GatewayError

CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Forbidden(GatewayError):
    status, code = 403, "forbidden"


def _source(request: web.Request) -> str | None:
    """Where the request says it comes from: its Origin, or without one its Referer."""
    origins = request.headers.getall("Origin", ())
    if len(origins) > 1:
        return None
    if origins:
        return origins[0]
    referers = request.headers.getall("Referer", ())
    return referers[0] if len(referers) == 1 else None


def check_same_origin(request: web.Request) -> None:
    """Refuse (403) a request whose Origin, or absent that its Referer, is not this listener.

    SECURITY: a page elsewhere can make a browser post here, cookie and all (SameSite aside);
    it cannot make the browser claim this origin. The host compared is the Host the browser
    sent, which a cross-site page cannot choose. Over TLS the origin must be https too.
    """
    source = _source(request)
    if source is None or source == "null":
        raise Forbidden("This request needs an Origin header naming this console's own origin.")
    parts = urlsplit(source)
    schemes = ("https",) if request.secure else ("http", "https")
    host = request.headers.get("Host", "")
    if parts.scheme.lower() not in schemes or not host or parts.netloc.lower() != host.lower():
        raise Forbidden("Cross-origin requests to the console are refused.")


def check_csrf(presented: str | None, expected: str) -> None:
    """Refuse (403) a state-changing request without the session's CSRF token."""
    # SECURITY: constant-time comparison.
    if not presented or not hmac.compare_digest(presented.encode(), expected.encode()):
        raise Forbidden(
            f"This request needs the session's CSRF token ({CSRF_HEADER} header or"
            f" {CSRF_FIELD} field)."
        )
