"""Forward a request to an upstream target and stream the answer back."""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import Sequence

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.config.models import HeaderRulesConfig
from gateway.dataplane.chain import RequestContext, ResponseCapture
from gateway.dataplane.request_body import BodyPump, BodyRefused
from gateway.dataplane.upstream import UpstreamPool
from gateway.errors import (
    BadGateway,
    ClientDisconnected,
    ExpectationFailed,
    GatewayError,
    GatewayTimeout,
    PayloadTooLarge,
    Unavailable,
)
from gateway.http.headers import (
    FORWARDED_FOR,
    FORWARDED_HOST,
    FORWARDED_PROTO,
    IDENTITY_HEADERS,
    RATE_LIMIT_HEADERS,
    REQUEST_ID,
    apply_rules,
    copy_end_to_end,
    stamp,
    strip_set,
)

log = structlog.get_logger("gateway.proxy")

# Bodies up to this size with a known length are read whole and sent with the head in one write;
# larger or open-ended ones stream.
_WHOLE_BODY_LIMIT = 64 * 1024

# Failures in which the request never left: the upstream cannot have acted on it.
_NOT_SENT = frozenset({"connect", "connect_timeout"})

# Methods that may be sent to a second target after a connect failure: they are safe to repeat.
_RETRYABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# SECURITY: what the client sent under any of these names (any case, '_' for '-', duplicates)
# is dropped; the gateway sets the ones it owns. Forwarded and X-Real-IP are dropped because a
# backend might believe them instead of our X-Forwarded-For.
_ALWAYS_STRIPPED = strip_set(
    [
        "Host",
        "Content-Length",
        "Expect",
        REQUEST_ID,
        FORWARDED_FOR,
        FORWARDED_PROTO,
        FORWARDED_HOST,
        "Forwarded",
        "X-Real-Ip",
    ]
)
# SECURITY: CORS is the gateway's policy; a backend that reflects Origin must not widen it.
_RESPONSE_STRIPPED = strip_set(
    [
        "Content-Length",
        REQUEST_ID,
        "Access-Control-Allow-Origin",
        "Access-Control-Allow-Credentials",
        "Access-Control-Allow-Methods",
        "Access-Control-Allow-Headers",
        "Access-Control-Expose-Headers",
        "Access-Control-Max-Age",
    ]
)
_RESPONSE_STRIPPED_LIMITED = _RESPONSE_STRIPPED | strip_set(RATE_LIMIT_HEADERS)


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
        injected_headers: Sequence[str] = (),
        rules: HeaderRulesConfig | None = None,
    ) -> None:
        self.pool = pool
        self.sandbox = sandbox
        self.max_body_size = max_body_size
        self.body_timeout = body_timeout
        self.timeout = aiohttp.ClientTimeout(
            total=None,
            connect=connect_timeout,
            sock_connect=connect_timeout,
            sock_read=read_timeout,
        )
        # SECURITY: identity headers are ours on every route, authenticated or not; the client's
        # credentials stay at the edge unless the route asks for them.
        # Plugins declare the headers they inject: every client-sent variant of them goes too.
        stripped = [
            *IDENTITY_HEADERS,
            *injected_headers,
            *([] if forward_authorization else ["Authorization"]),
        ]
        self._stripped = _ALWAYS_STRIPPED | strip_set(stripped)
        rules = rules or HeaderRulesConfig()
        self._request_rules = (
            rules.request.remove,
            tuple(rules.request.set.items()),
            tuple(rules.request.add.items()),
        )
        self._response_rules = (
            rules.response.remove,
            tuple(rules.response.set.items()),
            tuple(rules.response.add.items()),
        )
        self._has_request_rules = any(self._request_rules)
        self._has_response_rules = any(self._response_rules)

    async def __call__(self, ctx: RequestContext) -> web.StreamResponse:
        request = ctx.request
        declared = request.content_length
        if declared is not None and declared > self.max_body_size:
            raise PayloadTooLarge(self.max_body_size)
        expect = request.headers.get("Expect")
        if expect is not None and expect.strip().lower() != "100-continue":
            raise ExpectationFailed()
        has_body = request.body_exists
        if ctx.body is not None:  # a plugin read it whole: send those bytes
            declared = len(ctx.body)
        headers = self._upstream_headers(ctx, declared if has_body else None)
        pool = self.pool
        identity = ctx.identity
        if self.sandbox is not None and identity is not None and identity.key.environment == "test":
            pool = self.sandbox  # test keys never reach live targets when a sandbox exists
        if pool.max_concurrency is not None and pool.inflight >= pool.max_concurrency:
            # Full: say so at once rather than queue behind a backend that is already slow.
            pool.metrics.error("saturated")
            raise Unavailable(
                "The service is at capacity; try again shortly.", headers=[("Retry-After", "1")]
            )
        pool.inflight += 1
        pool.budget.deposit()
        try:
            return await self._forward(ctx, pool, headers, has_body)
        finally:
            pool.inflight -= 1

    async def _forward(
        self, ctx: RequestContext, pool: UpstreamPool, headers: CIMultiDict[str], has_body: bool
    ) -> web.StreamResponse:
        index = pool.pick()
        attempts = (
            2 if ctx.method in _RETRYABLE_METHODS and not has_body and len(pool.targets) > 1 else 1
        )
        for attempt in range(attempts):
            target = pool.targets[index]
            ctx.upstream_target = target
            url = f"{target}{ctx.path}?{ctx.query}" if ctx.query else f"{target}{ctx.path}"
            pump = (
                BodyPump(ctx, self.max_body_size, self.body_timeout)
                if has_body and ctx.body is None
                else None
            )
            try:
                response = await self._exchange(pool, ctx, url, headers, pump)
            except asyncio.CancelledError:
                # The body pump cancels us when the client's body fails before any response
                # started: answer with its reason. Any other cancellation goes on up.
                if pump is None or pump.failure is None or not pump.cancelled_handler:
                    raise
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()
                raise pump.failure from None
            except _UpstreamFailure as failure:
                if pump is not None and pump.failure is not None:
                    raise pump.failure from None
                if failure.kind in _NOT_SENT:
                    ctx.upstream_reached = False  # it never left: the upstream did nothing
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

    def _upstream_headers(self, ctx: RequestContext, body_length: int | None) -> CIMultiDict[str]:
        inbound = ctx.request.headers
        headers: CIMultiDict[str] = CIMultiDict()
        copy_end_to_end(inbound.items(), headers, self._stripped, inbound.getall("Connection", ()))
        fwd = ctx.forwarded
        if self.pool.preserve_host and fwd.host:
            headers["Host"] = fwd.host
        if body_length is not None:
            headers["Content-Length"] = str(body_length)
        headers[REQUEST_ID] = ctx.request_id
        headers[FORWARDED_FOR] = fwd.forwarded_for
        headers[FORWARDED_PROTO] = fwd.proto
        if fwd.host:
            headers[FORWARDED_HOST] = fwd.host
        headers.update(ctx.upstream_headers)
        if self._has_request_rules:
            apply_rules(headers, *self._request_rules)
        return headers

    async def _exchange(
        self,
        pool: UpstreamPool,
        ctx: RequestContext,
        url: str,
        headers: CIMultiDict[str],
        pump: BodyPump | None,
    ) -> web.StreamResponse:
        started = time.perf_counter()
        # From here the upstream may act on the request, whatever happens to us; only a failure
        # to connect (see _NOT_SENT) proves that it did not.
        ctx.upstream_reached = True
        try:
            upstream = await pool.session.request(
                ctx.method,
                URL(url, encoded=True),
                headers=headers,
                data=pump.chunks() if pump is not None else _bytes(ctx.body),
                allow_redirects=False,
                timeout=self.timeout,
            )
        except aiohttp.ConnectionTimeoutError as exc:
            raise _UpstreamFailure("connect_timeout", GatewayTimeout(), True, exc) from None
        except aiohttp.ClientConnectorError as exc:
            raise _UpstreamFailure("connect", BadGateway(), True, exc) from None
        except aiohttp.ServerTimeoutError as exc:
            raise _UpstreamFailure("read_timeout", GatewayTimeout(), False, exc) from None
        except aiohttp.ServerDisconnectedError as exc:
            raise _UpstreamFailure("disconnected", BadGateway(), False, exc) from None
        except (aiohttp.ClientError, BodyRefused, TimeoutError, ConnectionError) as exc:
            raise _UpstreamFailure("protocol", BadGateway(), False, exc) from None
        if pump is not None:
            pump.response_started = True
        ctx.upstream_reached = True
        try:
            ctx.upstream_seconds = time.perf_counter() - started
            pool.metrics.observe(ctx.upstream_seconds)
            response = self._response_head(ctx, upstream)
            capture = ctx.capture
            if capture is not None:
                capture.head(response.status, list(response.headers.items()))
            length = upstream.content_length
            if length is not None and length <= _WHOLE_BODY_LIMIT and response.content_length:
                return await self._whole(pool, ctx, upstream, response)
            try:
                await response.prepare(ctx.request)
            except ConnectionError:
                raise ClientDisconnected() from None
            content = upstream.content
            held: list[bytes] = []
            while True:
                try:
                    chunk = await content.readany()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    # SECURITY/correctness: the status line is already sent. Close the client's
                    # connection without the final chunk so it can never take a truncated body
                    # for a complete one (a Content-Length body is short; a chunked one open).
                    kind = "read_timeout" if isinstance(exc, TimeoutError) else "body_truncated"
                    pool.metrics.error(kind)
                    log.warning(
                        "upstream_body_failed",
                        upstream=pool.name,
                        target=ctx.upstream_target,
                        kind=kind,
                        error=describe_failure(exc),
                        bytes_sent=ctx.bytes_out,
                    )
                    ctx.log_fields["truncated"] = True
                    _abort(ctx.request)
                    return response
                if not chunk:
                    break
                if capture is not None:
                    capture.add(chunk)
                    if not capture.overflow:
                        held.append(chunk)  # held back until the capture is stored
                        continue
                    chunks, held = [*held, chunk], []
                else:
                    chunks = [chunk]
                await _send(response, chunks, ctx)
            if capture is not None:
                await _finish_capture(capture)
                await _send(response, held, ctx)
            try:
                await response.write_eof()
            except ConnectionError:
                raise ClientDisconnected() from None
            return response
        finally:
            upstream.release()

    async def _whole(
        self,
        pool: UpstreamPool,
        ctx: RequestContext,
        upstream: aiohttp.ClientResponse,
        response: web.StreamResponse,
    ) -> web.StreamResponse:
        """A small body of known length: read it all, then send head and body in one write.

        Nothing has reached the client yet, so an upstream that fails mid-body gets a clean 502.
        """
        try:
            body = await upstream.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            timeout = isinstance(exc, TimeoutError)
            answer = GatewayTimeout() if timeout else BadGateway()
            raise _UpstreamFailure(
                "read_timeout" if timeout else "body_truncated", answer, False, exc
            ) from None
        capture = ctx.capture
        if capture is not None:
            capture.add(body)
            await _finish_capture(capture)
        try:
            await response.prepare(ctx.request)
            await response.write_eof(body)
        except ConnectionError:
            raise ClientDisconnected() from None
        ctx.bytes_out = len(body)
        return response

    def _response_head(
        self, ctx: RequestContext, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        source = upstream.headers
        dropped = _RESPONSE_STRIPPED if ctx.rate_limit is None else _RESPONSE_STRIPPED_LIMITED
        copy_end_to_end(source.items(), response.headers, dropped, source.getall("Connection", ()))
        if (
            upstream.content_length is not None
            and "chunked" not in upstream.headers.get("Transfer-Encoding", "").lower()
        ):
            response.content_length = upstream.content_length
        if self._has_response_rules:
            apply_rules(response.headers, *self._response_rules)
        stamp(response.headers, ctx.request_id, ctx.response_headers)
        return response


async def _finish_capture(capture: ResponseCapture) -> None:
    # The upstream has answered in full: a plugin's hook failing (say, its store) must not
    # turn that answer into an error for the client.
    try:
        await capture.finish()
    except Exception:
        log.exception("capture_hook_failed")


async def _send(response: web.StreamResponse, chunks: list[bytes], ctx: RequestContext) -> None:
    for chunk in chunks:
        try:
            await response.write(chunk)
        except ConnectionError:
            raise ClientDisconnected() from None
        ctx.bytes_out += len(chunk)


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()


def _bytes(body: bytes | None) -> io.BytesIO | None:
    # A file-like payload is sent in pieces, without blocking the loop on a large body.
    return None if body is None else io.BytesIO(body)


def describe_failure(exc: BaseException) -> str:
    """An exception for the log, without the URL's query that some aiohttp messages quote.

    SECURITY: clients put tokens in query strings; the log never carries one.
    """
    return _QUERY.sub("", repr(exc))[:300]


_QUERY = re.compile(r"\?[^\s'\")]*")


class _UpstreamFailure(Exception):
    def __init__(
        self, kind: str, answer: GatewayError, retryable: bool, cause: BaseException
    ) -> None:
        self.kind = kind
        self.answer = answer
        self.retryable = retryable
        self.detail = describe_failure(cause)
        super().__init__(kind)
