"""Forward a request to an upstream target; ``response_relay`` streams the answer back."""

from __future__ import annotations

import time
from collections.abc import Sequence

import aiohttp
import structlog
from aiohttp import web

from gateway.config import HeaderRulesConfig
from gateway.dataplane.chain import RequestContext
from gateway.dataplane.request_body import BodyPump, BodyRefused
from gateway.dataplane.response_relay import ResponseRelay, UpstreamFailure, classify_failure
from gateway.dataplane.upstream import Target, UpstreamPool
from gateway.dataplane.upstream_http import (
    UpstreamError,
)
from gateway.errors import (
    BadGateway,
    ExpectationFailed,
    GatewayError,
    PayloadTooLarge,
)
from gateway.http.headers import (
    FORWARDED_FOR,
    FORWARDED_HOST,
    FORWARDED_PROTO,
    FORWARDING_HEADERS,
    IDENTITY_HEADERS,
    REQUEST_ID,
    Field,
    apply_field_rules,
    copy_end_to_end,
    encode_fields,
    wire_set,
)

log = structlog.get_logger("gateway.proxy")

# Methods that may be sent to a second target after a connect failure: they are safe to repeat.
_RETRYABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# SECURITY: what the client sent under any of these names (any case, '_' for '-', duplicates)
# is dropped; the gateway sets the ones it owns.
_ALWAYS_STRIPPED = wire_set(["Host", "Content-Length", "Expect", *FORWARDING_HEADERS])


class Proxy:
    """The terminal handler of a route's chain: everything per route is bound here once."""

    def __init__(
        self,
        pool: UpstreamPool,
        *,
        connect_timeout: float,
        read_timeout: float,
        body_timeout: float,
        max_body_size: int,
        sandbox: UpstreamPool | None = None,
        forward_authorization: bool = False,
        identity_headers: Sequence[str] = IDENTITY_HEADERS,
        injected_headers: Sequence[str] = (),
        rules: HeaderRulesConfig | None = None,
    ) -> None:
        self.pool = pool
        self.sandbox = sandbox
        self.max_body_size = max_body_size
        self.body_timeout = body_timeout
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        # SECURITY: identity headers (the attribute headers the config names among them) are
        # ours on every route, authenticated or not; the client's credentials stay at the edge
        # unless the route asks for them.
        # Plugins declare the headers they inject: every client-sent variant of them goes too.
        stripped = [
            *identity_headers,
            *injected_headers,
            *([] if forward_authorization else ["Authorization"]),
        ]
        self._stripped = _ALWAYS_STRIPPED | wire_set(stripped)
        rules = rules or HeaderRulesConfig()
        self._request_rules = (
            rules.request.remove,
            tuple(rules.request.set.items()),
            tuple(rules.request.add.items()),
        )
        self._has_request_rules = any(self._request_rules)
        self._relay = ResponseRelay(rules)

    async def __call__(self, ctx: RequestContext) -> web.StreamResponse:
        request = ctx.request
        declared = request.content_length
        if declared is not None and declared > self.max_body_size:
            raise PayloadTooLarge(self.max_body_size)
        expect = request.headers.get("Expect")
        if expect is not None and expect.strip().lower() != "100-continue":
            raise ExpectationFailed()
        has_body = request.body_exists
        headers = self.upstream_headers(ctx)
        pool = self.pool_for(ctx)
        pool.admit()
        try:
            return await self._forward(ctx, pool, headers, has_body, declared)
        finally:
            pool.inflight -= 1

    async def _forward(
        self,
        ctx: RequestContext,
        pool: UpstreamPool,
        headers: list[Field],
        has_body: bool,
        declared: int | None,
    ) -> web.StreamResponse:
        index = pool.pick()
        attempts = (
            2 if ctx.method in _RETRYABLE_METHODS and not has_body and len(pool.targets) > 1 else 1
        )
        for attempt in range(attempts):
            target = pool.targets[index]
            ctx.upstream_target = target
            pump = None
            if has_body and ctx.body is None:
                pump = BodyPump(ctx, self.max_body_size, self.body_timeout)
            try:
                response = await self._exchange(
                    pool, pool.upstreams[index], ctx, headers, pump, declared
                )
            except UpstreamFailure as failure:
                if pump is not None and pump.failure is not None:
                    raise pump.failure from None
                pool.metrics.error(failure.kind)
                pool.failed(index)
                log.warning(
                    "upstream_failed",
                    upstream=pool.name,
                    target=target,
                    kind=failure.kind,
                    attempt=attempt + 1,
                    error=failure.detail,
                )
                # One more target, if the method is safe to repeat and the budget allows it.
                if failure.retryable and attempt + 1 < attempts and pool.budget.withdraw():
                    index = pool.pick(exclude=index)
                    continue
                raise failure.answer from None
            pool.succeeded(index)
            return response
        raise BadGateway()  # unreachable: the loop returns or raises

    def pool_for(self, ctx: RequestContext) -> UpstreamPool:
        identity = ctx.identity
        if self.sandbox is not None and identity is not None and identity.environment == "test":
            return self.sandbox  # test keys never reach live targets when a sandbox exists
        return self.pool

    def upstream_headers(self, ctx: RequestContext) -> list[Field]:
        """The request head for the upstream, without framing: the client sets that."""
        fields = copy_end_to_end(ctx.request.fields, self._stripped)
        fwd = ctx.forwarded
        ours = [("Host", fwd.host)] if self.pool.preserve_host and fwd.host else []
        ours += ((REQUEST_ID, ctx.request_id), (FORWARDED_FOR, fwd.forwarded_for))
        ours.append((FORWARDED_PROTO, fwd.proto))
        if fwd.host:
            ours.append((FORWARDED_HOST, fwd.host))
        injected = ctx.upstream_headers
        if injected:
            # A plugin's value for a name we set replaces ours.
            replaced = {name.lower() for name in injected}
            ours = [(n, v) for n, v in ours if n.lower() not in replaced]
            ours += injected.items()
        fields += encode_fields(ours)
        if self._has_request_rules:
            fields = apply_field_rules(fields, *self._request_rules)
        return fields

    async def _exchange(
        self,
        pool: UpstreamPool,
        target: Target,
        ctx: RequestContext,
        headers: list[Field],
        pump: BodyPump | None,
        declared: int | None,
    ) -> web.StreamResponse:
        started = time.perf_counter()
        # From here the upstream may act on the request, whatever happens to us; only an error
        # that says nothing was sent proves that it did not.
        ctx.upstream_reached = True
        try:
            path, headers = target.address(ctx.path, ctx.query, headers)
            upstream = await target.pool.request(
                ctx.method.encode("ascii"),
                path,
                headers,
                pump.chunks() if pump is not None else ctx.body,
                content_length=declared if pump is not None else None,
                idempotent=ctx.method in _RETRYABLE_METHODS,
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
                expect_continue=pump is not None and pump.expect_continue,
            )
        except UpstreamError as exc:
            ctx.upstream_reached = exc.sent
            raise classify_failure(exc) from None
        except (
            aiohttp.ClientError,
            BodyRefused,
            GatewayError,
            TimeoutError,
            ConnectionError,
            ValueError,
            web.HTTPException,
        ) as exc:
            # The client's body failed (the pump holds why) or the head could not be written.
            raise UpstreamFailure("protocol", BadGateway(), False, exc) from None
        try:
            ctx.upstream_seconds = time.perf_counter() - started
            pool.metrics.observe(ctx.upstream_seconds)
            return await self._relay(pool, ctx, upstream)
        finally:
            upstream.close()
