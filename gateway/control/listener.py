"""The admin listener: health, readiness, metrics, and the token-protected /admin API."""

from __future__ import annotations

import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gateway.config import AdminConfig, LoadedConfig
from gateway.config.validation import REDACTED, redact_url
from gateway.console.app import Console
from gateway.control.admin_tokens import AdminTokens
from gateway.errors import (
    GatewayError,
    InternalError,
    MethodNotAllowed,
    RouteNotFound,
    Unavailable,
)
from gateway.http.headers import bearer_token
from gateway.http.listen import ListenError, listen
from gateway.http.request_id import accept_request_id
from gateway.http.server import EnvelopeAppRunner
from gateway.store import StoreError
from gateway.store.private_files import private_dir, report

log = structlog.get_logger("gateway.admin")

Readiness = Callable[[], Awaitable[dict[str, Any]]]
ConfigView = Callable[[], dict[str, Any]]
RouteInstaller = Callable[[web.Application], None]
Reload = Callable[[str], Awaitable[list[str]]]  # takes who asked, for the audit log

# The request key under which the admin listener leaves who made a call: the name of the admin
# token presented (or of the console session's token), for the audit log.
ACTOR = web.RequestKey("actor", str)
DEFAULT_ACTOR = "admin"  # the actor of admin.token


def actor_of(request: web.Request) -> str:
    """Who made this admin call (set by the listener's token check)."""
    actor: str = request.get(ACTOR, DEFAULT_ACTOR)
    return actor


class ConfigInvalid(GatewayError):
    status, code = 400, "config_invalid"


def saved_admin_token(config: AdminConfig) -> str | None:
    """admin.token, else the token saved in admin.token_file, if any (what the CLI uses).

    With named tokens (admin.tokens) and no admin.token, the file is not used: the CLI is
    given one of them (GATEWAY_ADMIN_TOKEN), so the audit log names its holder.
    """
    if config.token:
        return config.token
    if config.tokens:
        return None
    try:
        token = Path(config.token_file).read_text().strip()
    except FileNotFoundError:
        return None
    return token if len(token) >= 16 else None


def admin_token(config: AdminConfig) -> str:
    """The admin token; without one configured or saved, a new one is made and saved.

    SECURITY: a made token is random (256 bits) and its file is readable by the owner only.
    """
    token = saved_admin_token(config)
    if token is not None:
        return token
    path = Path(config.token_file)
    token = secrets.token_urlsafe(32)
    report([private_dir(path.parent)])  # the state directory: 0700 when we make it
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an unusable token file we overwrite may have been looser
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def admin_tokens(config: AdminConfig) -> AdminTokens:
    """The tokens the admin listener takes: admin.tokens by name, and admin.token as
    ``admin``; without either, the saved (or a newly made) token as ``admin``."""
    named = [(entry.name, entry.token) for entry in config.tokens]
    if config.token or not named:
        named.insert(0, (DEFAULT_ACTOR, admin_token(config)))
    return AdminTokens(named)


def redacted_config(loaded: LoadedConfig) -> dict[str, Any]:
    """The config in force as JSON, secrets replaced, with the hash of its file."""
    data = loaded.config.model_dump(mode="json")
    secrets = (("admin", "token"), ("keys", "pepper"), ("webhooks", "secret_key"))
    for section, field in (*secrets, ("store", "password")):
        if data[section].get(field):
            data[section][field] = REDACTED
    data["admin"]["tokens"] = [
        {**entry, "token": REDACTED} for entry in data["admin"].get("tokens") or ()
    ]
    oauth = data.get("oauth") or {}
    if oauth.get("introspection"):
        oauth["introspection"]["client_secret"] = REDACTED
    for jwk in (oauth.get("jwks") or {}).get("keys") or ():
        # An oct key is the HMAC secret itself (private members are refused at load anyway).
        for member in ("k", "d", "p", "q", "dp", "dq", "qi"):
            if member in jwk:
                jwk[member] = REDACTED
    url = data["store"].get("url")
    if url:
        data["store"]["url"] = redact_url(url)
    data["store"]["urls"] = [redact_url(u) for u in data["store"].get("urls") or ()]
    return {"hash": loaded.digest, "source": loaded.source, "config": data}


class AdminUnauthorized(GatewayError):
    status, code, message = 401, "unauthorized", "A valid admin token is required."

    def __init__(self) -> None:
        super().__init__(headers=[("WWW-Authenticate", 'Bearer realm="admin"')])


async def start_admin_listener(
    config: AdminConfig,
    *,
    registry: CollectorRegistry,
    readiness: Readiness,
    config_view: ConfigView,
    install: RouteInstaller | None = None,
    reload: Reload | None = None,
    header_timeout: float,
) -> tuple[web.AppRunner, tuple[str, int]]:
    """The admin app on its own listener: its runner, and the address it got."""
    app = build_admin_app(
        registry=registry,
        tokens=admin_tokens(config),
        readiness=readiness,
        config_view=config_view,
        install=install,
        reload=reload,
    )
    runner = EnvelopeAppRunner(
        app, header_timeout=header_timeout, access_log=None, shutdown_timeout=5
    )
    await runner.setup()
    try:
        address = await listen(runner, config.host, config.port, "admin", False)
    except ListenError:
        await runner.cleanup()
        raise
    return runner, address


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps({"data": data}), status=status, content_type="application/json"
    )


def build_admin_app(
    *,
    registry: CollectorRegistry,
    tokens: AdminTokens,
    readiness: Readiness,
    config_view: ConfigView,
    install: RouteInstaller | None = None,
    reload: Reload | None = None,
) -> web.Application:
    """The admin application; later issues add their /admin routes to it."""
    console = Console(tokens.resolve)

    @web.middleware
    async def envelope(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        request_id = accept_request_id(request.headers.getall("X-Request-Id", []))
        try:
            if request.path.startswith("/admin/") or request.path == "/admin":
                request[ACTOR] = _authenticate(request, tokens, console)
            response = await handler(request)
        except GatewayError as exc:
            return exc.render(request_id)
        except StoreError:
            return Unavailable("The state store is unavailable; try again shortly.").render(
                request_id
            )
        except web.HTTPNotFound:
            return RouteNotFound().render(request_id)
        except web.HTTPMethodNotAllowed as exc:
            return MethodNotAllowed(exc.allowed_methods).render(request_id)
        except web.HTTPException as exc:
            # aiohttp's own answers (a body over the size limit, ...) in our envelope too.
            error = GatewayError(exc.reason)
            error.status = exc.status
            error.code = "payload_too_large" if exc.status == 413 else "bad_request"
            return error.render(request_id)
        except Exception:
            log.exception("admin_error", path=request.path)
            return InternalError().render(request_id)
        response.headers["X-Request-Id"] = request_id
        return response

    async def healthz(request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        state = await readiness()
        return json_response(state, status=200 if state.get("status") == "ready" else 503)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def config(request: web.Request) -> web.Response:
        return json_response(config_view())

    async def reload_config(request: web.Request) -> web.Response:
        if reload is None:
            raise RouteNotFound()
        problems = await reload(actor_of(request))
        if problems:
            raise ConfigInvalid("; ".join(problems))
        return json_response({"reloaded": True, **config_view()})

    app = web.Application(middlewares=[envelope])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/config", config)
    app.router.add_post("/admin/reload", reload_config)
    console.add_routes(app)
    if install is not None:
        install(app)
    return app


def _authenticate(request: web.Request, tokens: AdminTokens, console: Console) -> str:
    """Who makes this admin call: the name of the Bearer token presented, or without an
    Authorization header the console session's; 401 for neither.

    SECURITY: a Bearer token is checked as ever (constant time, never logged) and needs no
    CSRF token: a browser never sends it on its own. A wrong one is not helped by a cookie.
    """
    if "Authorization" in request.headers:
        actor = tokens.resolve(bearer_token(request.headers))
    else:
        actor = console.api_actor(request)
    if actor is None:
        raise AdminUnauthorized()
    return actor
