"""The admin listener: health, readiness, metrics, and the token-protected /admin API."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gateway.config import LoadedConfig
from gateway.errors import GatewayError, InternalError, MethodNotAllowed, RouteNotFound
from gateway.request_id import accept_request_id

log = structlog.get_logger("gateway.admin")

Readiness = Callable[[], dict[str, Any]]
ConfigView = Callable[[], dict[str, Any]]


def redacted_config(loaded: LoadedConfig) -> dict[str, Any]:
    """The config in force as JSON, secrets replaced, with the hash of its file."""
    data = loaded.config.model_dump(mode="json")
    if data["admin"].get("token"):
        data["admin"]["token"] = "***"  # noqa: S105 - a redaction marker, not a password
    return {"hash": loaded.digest, "source": loaded.source, "config": data}


class AdminUnauthorized(GatewayError):
    status, code, message = 401, "unauthorized", "A valid admin token is required."

    def __init__(self) -> None:
        super().__init__(headers=[("WWW-Authenticate", 'Bearer realm="admin"')])


class AdminDisabled(GatewayError):
    status, code = 503, "unavailable"
    message = "The admin API is off: set admin.token in gateway.yaml."


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps({"data": data}), status=status, content_type="application/json"
    )


def build_admin_app(
    *,
    registry: CollectorRegistry,
    token: str | None,
    readiness: Readiness,
    config_view: ConfigView,
) -> web.Application:
    """The admin application; later issues add their /admin routes to it."""

    @web.middleware
    async def envelope(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        request_id = accept_request_id(request.headers.getall("X-Request-Id", []))
        try:
            if request.path.startswith("/admin/") or request.path == "/admin":
                _check_token(request, token)
            response = await handler(request)
        except GatewayError as exc:
            return exc.render(request_id)
        except web.HTTPNotFound:
            return RouteNotFound().render(request_id)
        except web.HTTPMethodNotAllowed as exc:
            return MethodNotAllowed(exc.allowed_methods).render(request_id)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("admin_error", path=request.path)
            return InternalError().render(request_id)
        response.headers["X-Request-Id"] = request_id
        return response

    async def healthz(request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        state = readiness()
        return json_response(state, status=200 if state.get("status") == "ready" else 503)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def config(request: web.Request) -> web.Response:
        return json_response(config_view())

    app = web.Application(middlewares=[envelope])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/config", config)
    return app


def _check_token(request: web.Request, token: str | None) -> None:
    if token is None:
        raise AdminDisabled()
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    # SECURITY: constant-time comparison; the token is never logged.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        presented.strip().encode(), token.encode()
    ):
        raise AdminUnauthorized()
