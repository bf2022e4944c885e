"""The data plane: one catch-all handler that routes, runs the chain and logs."""

from __future__ import annotations

import time

import structlog
from aiohttp import web

from gateway.dataplane.chain import RequestContext
from gateway.dataplane.request_recorder import RequestRecorder
from gateway.dataplane.snapshot import Snapshot
from gateway.errors import BadRequest, GatewayError, InternalError
from gateway.http.headers import REQUEST_ID, field_text, is_preflight
from gateway.http.paths import split_target
from gateway.http.request import Request
from gateway.http.request_id import accept_request_id, current_request_id, new_request_id
from gateway.observability.log import AccessLog
from gateway.observability.metrics import Metrics
from gateway.store.activity_models import RequestEntry

log = structlog.get_logger("gateway")
access_logger = structlog.get_logger("gateway.access")
_MAX_LOGGED_PATH = 2048


def host_of(header: str | None) -> str:
    """The host name of a Host header, lower-cased, without port or trailing dot."""
    if not header:
        return ""
    if header.startswith("["):
        return header[: header.find("]") + 1].lower()
    return header.partition(":")[0].rstrip(".").lower()


class DataPlane:
    """Serves client traffic with the snapshot in force when each request arrived."""

    def __init__(
        self,
        snapshot: Snapshot,
        metrics: Metrics,
        *,
        access_log_enabled: bool = True,
        fast_log: AccessLog | None = None,
        recorder: RequestRecorder | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.metrics = metrics
        self.access_log_enabled = access_log_enabled
        self._fast_log = fast_log
        self._recorder = recorder
        self._inflight = metrics.inflight

    async def handle(self, request: Request) -> web.StreamResponse:
        snapshot = self.snapshot  # one reference for the whole request, whatever reloads do
        started = time.perf_counter()
        request_id = accept_request_id(
            request.headers.getall(REQUEST_ID, []), snapshot.request_id_prefix
        )
        current_request_id.set(request_id)
        ctx = RequestContext(
            request=request,
            request_id=request_id,
            method=request.method,
            path="",
            query="",
            forwarded=snapshot.resolver.resolve(request),
            started=started,
        )
        self._inflight.inc()
        snapshot.enter()
        try:
            response = await self._dispatch(snapshot, ctx)
        finally:
            snapshot.leave()
            self._inflight.dec()
        duration = time.perf_counter() - started
        route = ctx.route
        (route.metrics if route else snapshot.unmatched_metrics).record(
            ctx.method, response.status, duration
        )
        if self.access_log_enabled:
            self._log(ctx, response, duration)
        recorder = self._recorder
        if recorder is not None and recorder.enabled:
            self._record(recorder, ctx, response.status, duration)
        return response

    def render_error(self, error: GatewayError) -> web.Response:
        """An error answered below the handler (a malformed request), as the config says."""
        snapshot = self.snapshot
        return error.render(new_request_id(snapshot.request_id_prefix), (), snapshot.error_map)

    async def _dispatch(self, snapshot: Snapshot, ctx: RequestContext) -> web.StreamResponse:
        request = ctx.request
        try:
            if ctx.method == "CONNECT":
                # SECURITY: a reverse proxy does not tunnel. Forwarded, CONNECT would turn the
                # pooled upstream connection into a tunnel, and what follows into its bytes.
                raise BadRequest("CONNECT is not supported here.", close_connection=True)
            ctx.path, ctx.query = split_target(request.raw_path)
            method = ctx.method
            if is_preflight(request.method, request.headers):
                # A browser asks whether it may send another method: route by that one, so
                # the route's CORS policy answers (a GET-only route would say 405).
                ctx.preflight = True
                method = request.headers["Access-Control-Request-Method"].upper()
            match = snapshot.router.match(method, host_of(request.headers.get("Host")), ctx.path)
            ctx.route = match.target
            ctx.params = match.params
            return await match.target.handler(ctx)
        except GatewayError as exc:
            response = exc.render(ctx.request_id, ctx.response_headers, snapshot.error_map)
        except Exception:
            log.exception("unhandled_error", path=ctx.path or None)
            response = InternalError().render(ctx.request_id, (), snapshot.error_map)
        ctx.bytes_out = response.content_length or 0
        return response

    @staticmethod
    def _record(
        recorder: RequestRecorder, ctx: RequestContext, status: int, duration: float
    ) -> None:
        request = ctx.request
        route = ctx.route
        fields = ctx.log_fields  # org_id and key_id of a valid key, even one refused after
        org_id, key_id = fields.get("org_id"), fields.get("key_id")
        client_id = fields.get("client_id")  # an access token's, where key_id is None
        decision = ctx.rate_limit
        upstream_seconds = ctx.upstream_seconds
        user_agent = request.headers.get("User-Agent")
        idempotency = fields.get("idempotency")
        # SECURITY: the path without its query (clients put tokens there), the key by its id.
        path = ctx.path or request.raw_path.partition("?")[0]
        recorder.record(
            RequestEntry(
                time.time(),  # when the answer was done, as the entry reaches the log
                ctx.request_id,
                None if org_id is None else str(org_id),
                None if key_id is None else str(key_id),
                ctx.method,
                field_text(path[:_MAX_LOGGED_PATH]),
                route.label if route else None,
                status,
                round(duration * 1000, 3),
                None if upstream_seconds is None else round(upstream_seconds * 1000, 3),
                ctx.client_ip,
                None if user_agent is None else field_text(user_agent)[:_MAX_LOGGED_PATH],
                ctx.upstream_target,
                None if decision is None else not decision.allowed,
                None if idempotency is None else str(idempotency),
                None if client_id is None else str(client_id),
            )
        )

    def _log(self, ctx: RequestContext, response: web.StreamResponse, duration: float) -> None:
        request = ctx.request
        route = ctx.route
        upstream_seconds = ctx.upstream_seconds
        user_agent = request.headers.get("User-Agent")  # any bytes: see field_text
        fields: dict[str, object] = {
            "request_id": ctx.request_id,
            "method": ctx.method,
            # The query is left out: clients put tokens in it.
            "path": ctx.path or request.raw_path.partition("?")[0][:512],
            "route": route.label if route else None,
            "status": response.status,
            "duration_ms": round(duration * 1000, 3),
            "upstream_ms": None if upstream_seconds is None else round(upstream_seconds * 1000, 3),
            "bytes_in": ctx.bytes_in,
            "bytes_out": ctx.bytes_out,
            "client_ip": ctx.client_ip,
            "user_agent": None if user_agent is None else field_text(user_agent),
            "upstream": ctx.upstream_target,
        }
        if ctx.log_fields:
            fields.update(ctx.log_fields)
        if self._fast_log is not None:
            self._fast_log.write(fields)
        else:
            access_logger.info("request", **fields)
