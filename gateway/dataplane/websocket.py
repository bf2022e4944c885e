"""WebSocket pass-through on routes with ``websocket: true``: the handshake is a request like any
other (the route's whole chain runs first), then goes to the upstream on a connection of its
own; after the upstream's 101 the bytes are relayed both ways (``websocket_relay``)."""

from __future__ import annotations

import time

import structlog
from aiohttp import web

from gateway.config import HeaderRulesConfig
from gateway.dataplane.chain import RequestContext
from gateway.dataplane.proxy import Proxy
from gateway.dataplane.response_relay import ResponseRelay, classify_failure
from gateway.dataplane.upstream import UpstreamPool
from gateway.dataplane.upstream_http import (
    UpstreamError,
)
from gateway.dataplane.upstream_http.request_head import build_head
from gateway.dataplane.websocket_relay import Relay
from gateway.dataplane.websocket_upstream import UpstreamSide, open_upstream
from gateway.errors import (
    BadGateway,
    BadRequest,
    ClientDisconnected,
    GatewayError,
)
from gateway.http.headers import connection_tokens
from gateway.http.request import Request
from gateway.observability.metrics import Metrics

log = structlog.get_logger("gateway.websocket")

# The outcome label of gateway_websocket_sessions_total: a fixed set.
OUTCOMES = (
    "upstream_refused",
    "upstream_failed",
    "client_closed",
    "upstream_closed",
    "idle_timeout",
    "total_timeout",
    "shutdown",
)
# Named again on the 101 sent to the client: the relay drops hop-by-hop headers.
_SWITCH = [("Connection", "Upgrade"), ("Upgrade", "websocket")]


def is_handshake(request: Request) -> bool:
    """An HTTP/1.1 GET asking to switch to WebSocket (RFC 6455 section 4.1), judged as
    aiohttp's parser judges it: only then does it keep the connection's next bytes for us."""
    if request.method != "GET" or request.version != (1, 1):
        return False
    upgrade = request.headers.getall("Upgrade", ())
    if len(upgrade) != 1 or upgrade[0].lower() != "websocket":
        return False
    return "upgrade" in connection_tokens(request.headers.getall("Connection", ()))


class WebSocketMetrics:
    """A route's WebSocket metric children, bound once per snapshot."""

    def __init__(self, metrics: Metrics, route: str) -> None:
        self.open = metrics.websocket_open.labels(route)
        self.sessions = {o: metrics.websocket_sessions.labels(route, o) for o in OUTCOMES}


class WebSocketProxy:
    """The end of a ``websocket: true`` route's chain: handshakes are relayed here, every other
    request goes to the route's proxy as on any route."""

    def __init__(
        self,
        proxy: Proxy,
        *,
        idle_timeout: float,
        total_timeout: float,
        rules: HeaderRulesConfig,
        metrics: WebSocketMetrics,
    ) -> None:
        self._proxy = proxy
        self._idle = idle_timeout
        self._total = total_timeout
        self._relay = ResponseRelay(rules)
        self._metrics = metrics

    async def __call__(self, ctx: RequestContext) -> web.StreamResponse:
        if not is_handshake(ctx.request):
            return await self._proxy(ctx)
        if ctx.request.body_exists:
            raise BadRequest("A WebSocket handshake has no body.", close_connection=True)
        pool = self._proxy.pool_for(ctx)
        # The slot is held for the handshake only: an open session is a connection, not a
        # request the backend is working on.
        pool.admit()
        try:
            upstream = await self._handshake(ctx, pool)
        finally:
            pool.inflight -= 1
        if upstream.status == 101:
            return await self._session(ctx, pool, upstream)
        upstream.abort()  # a refusal is read whole; its connection is never reused
        self._ended(ctx, "upstream_refused")
        return await self._relay(pool, ctx, upstream.answer())

    async def _handshake(self, ctx: RequestContext, pool: UpstreamPool) -> UpstreamSide:
        proxy = self._proxy
        # The client's Upgrade and Connection are hop-by-hop and were dropped: ours replace them.
        headers = [
            *proxy.upstream_headers(ctx),
            (b"Connection", b"Upgrade"),
            (b"Upgrade", b"websocket"),
        ]
        index = pool.pick()
        for attempt in (1, 2):
            target = pool.upstreams[index]
            ctx.upstream_target = pool.targets[index]
            try:
                path, sent = target.address(ctx.path, ctx.query, headers)
                head = build_head(b"GET", path, sent, b"")
            except ValueError as exc:
                log.warning("websocket_handshake_unsendable", error=str(exc))
                raise BadGateway() from None
            ctx.upstream_reached = True
            started = time.perf_counter()
            try:
                upstream = await open_upstream(
                    target,
                    head,
                    connect_timeout=proxy.connect_timeout,
                    read_timeout=proxy.read_timeout,
                )
            except UpstreamError as exc:
                ctx.upstream_reached = exc.sent
                failure = classify_failure(exc)
                pool.metrics.error(failure.kind)
                pool.failed(index)
                log.warning(
                    "upstream_failed",
                    upstream=pool.name,
                    target=ctx.upstream_target,
                    kind=failure.kind,
                    attempt=attempt,
                    error=failure.detail,
                    websocket=True,
                )
                # Another target, if nothing was sent to this one and the budget allows it.
                if (
                    not exc.sent
                    and attempt == 1
                    and len(pool.targets) > 1
                    and pool.budget.withdraw()
                ):
                    index = pool.pick(exclude=index)
                    continue
                self._ended(ctx, "upstream_failed")
                raise failure.answer from None
            ctx.upstream_seconds = time.perf_counter() - started
            pool.metrics.observe(ctx.upstream_seconds)
            pool.succeeded(index)
            return upstream
        raise BadGateway()  # unreachable: the loop returns or raises

    async def _session(
        self, ctx: RequestContext, pool: UpstreamPool, upstream: UpstreamSide
    ) -> web.StreamResponse:
        # The 101's head goes through the relay like any answer's (header rules, our stamp).
        ctx.response_headers.extend(_SWITCH)
        try:
            response = await self._relay(pool, ctx, upstream.answer())
            response.force_close()  # the connection is the WebSocket's now, never HTTP again
            relay = Relay(ctx.request, upstream)
        except (GatewayError, ConnectionError) as exc:
            upstream.abort()
            if not ctx.request.started:  # nothing sent: an error envelope follows
                del ctx.response_headers[-len(_SWITCH) :]
            self._ended(ctx, "client_closed")
            if isinstance(exc, GatewayError):
                raise
            raise ClientDisconnected() from None
        except BaseException:
            upstream.abort()
            raise
        self._metrics.open.inc()
        try:
            await relay.run(self._idle, self._total)
        finally:
            self._metrics.open.dec()
            ctx.bytes_in = relay.bytes_in
            ctx.bytes_out += relay.bytes_out
            self._ended(ctx, relay.outcome or "shutdown")
        return response

    def _ended(self, ctx: RequestContext, outcome: str) -> None:
        self._metrics.sessions[outcome].inc()
        ctx.log_fields["websocket"] = outcome
