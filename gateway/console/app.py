"""The console's routes on the admin app: pages, login, logout, and session auth for /admin/*."""

from __future__ import annotations

from collections.abc import Callable

import structlog
from aiohttp import web

from gateway.console.assets import ASSET_PATH, Assets, secure
from gateway.console.guard import (
    CSRF_FIELD,
    CSRF_HEADER,
    SAFE_METHODS,
    check_csrf,
    check_same_origin,
)
from gateway.console.login_limit import LoginLimit
from gateway.console.sessions import SessionStore
from gateway.errors import BadRequest

log = structlog.get_logger("gateway.console")

SESSION_COOKIE = "gateway_session"
# The name of the admin token presented, or None when it is none of them.
Resolve = Callable[[str | None], str | None]


def _see_other(location: str) -> web.Response:
    return secure(web.Response(status=303, headers={"Location": location}))


async def _form_field(request: web.Request, name: str) -> str | None:
    """A text field of a posted form; a body that is no form (a bad charset, a part without a
    name or boundary) is a 400, not a failure of the gateway."""
    try:
        form = await request.post()
    except (ValueError, LookupError):  # UnicodeDecodeError is a ValueError
        raise BadRequest("The body is not a form.") from None
    value = form.get(name)
    return value if isinstance(value, str) else None


def _client(request: web.Request) -> str:
    return request.remote or "unknown"


class Console:
    """The console at ``/``: a login form, a session cookie, and the static app.

    Sessions live in this process's memory: one admin listener per gateway, so a session
    belongs to the instance that opened it, and ends with it.
    """

    def __init__(
        self,
        resolve: Resolve,
        *,
        sessions: SessionStore | None = None,
        login_limit: LoginLimit | None = None,
    ) -> None:
        self._resolve = resolve
        self.sessions = SessionStore() if sessions is None else sessions
        self._limit = LoginLimit() if login_limit is None else login_limit
        self._assets = Assets()

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", self.index)
        r.add_get("/login", self.login_page)
        r.add_post("/login", self.login)
        r.add_post("/logout", self.logout)
        r.add_get(ASSET_PATH + "{name:.+}", self.asset)

    def api_actor(self, request: web.Request) -> str | None:
        """Who calls the admin API with the session cookie, or None without a live session.

        SECURITY: a cookie is sent by the browser on its own, so a call that changes state
        must also carry the session's CSRF token and come from this origin (403 otherwise).
        """
        session = self.sessions.find(request.cookies.get(SESSION_COOKIE))
        if session is None:
            return None
        if request.method not in SAFE_METHODS:
            check_same_origin(request)
            check_csrf(request.headers.get(CSRF_HEADER), session.csrf_token)
        return session.actor

    async def index(self, request: web.Request) -> web.Response:
        session = self.sessions.find(request.cookies.get(SESSION_COOKIE))
        if session is None:
            return _see_other("/login")
        return self._assets.page("console.html", csrf_token=session.csrf_token, actor=session.actor)

    async def login_page(self, request: web.Request) -> web.Response:
        if self.sessions.find(request.cookies.get(SESSION_COOKIE)) is not None:
            return _see_other("/")
        return self._assets.page("login.html", error="")

    async def login(self, request: web.Request) -> web.Response:
        check_same_origin(request)  # SECURITY: no logging a browser in from another site
        client = _client(request)
        # SECURITY: the body is read before the limit is asked, with no await between the
        # asking and the counting: logins sent at once cannot all pass one check.
        token = await _form_field(request, "token")
        wait = self._limit.retry_after(client)
        if wait is not None:
            log.warning("console_login_refused", client_ip=client, reason="rate_limited")
            response = self._assets.page(
                "login.html",
                429,
                error=f"Too many failed logins from this address: try again in {wait} s.",
            )
            response.headers["Retry-After"] = str(wait)
            return response
        # SECURITY: the token is compared, never logged nor shown back.
        actor = self._resolve(token)
        if actor is None:
            self._limit.failed(client)
            log.warning("console_login_refused", client_ip=client, reason="unknown_token")
            response = self._assets.page("login.html", 401, error="That admin token is not valid.")
            response.headers["WWW-Authenticate"] = 'Bearer realm="admin"'
            return response
        self.sessions.close(request.cookies.get(SESSION_COOKIE))  # a new login, a new id
        session_id, _ = self.sessions.open(actor)
        log.info("console_login", actor=actor, client_ip=client)
        response = _see_other("/")
        response.set_cookie(
            SESSION_COOKIE,
            session_id,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,  # the cookie of a TLS login is never sent in the clear
        )
        return response

    async def logout(self, request: web.Request) -> web.Response:
        check_same_origin(request)
        session_id = request.cookies.get(SESSION_COOKIE)
        session = self.sessions.find(session_id)
        if session is not None:
            presented = await _form_field(request, CSRF_FIELD) or request.headers.get(CSRF_HEADER)
            check_csrf(presented, session.csrf_token)
            self.sessions.close(session_id)
            log.info("console_logout", actor=session.actor, client_ip=_client(request))
        response = _see_other("/login")
        response.del_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="Strict")
        return response

    async def asset(self, request: web.Request) -> web.Response:
        return self._assets.asset(request.match_info["name"])
