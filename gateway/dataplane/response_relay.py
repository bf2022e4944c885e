"""Stream an upstream's answer back: the head the client sees, then the body, whole or in chunks.

The request side is ``proxy``; an answer that fails before anything reached the client raises
UpstreamFailure, which the proxy logs, counts and answers.
"""

from __future__ import annotations

import re

import structlog
from aiohttp import web

from gateway.config import HeaderRulesConfig
from gateway.dataplane.chain import RequestContext, ResponseCapture
from gateway.dataplane.upstream import UpstreamPool
from gateway.dataplane.upstream_http import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamReadTimeout,
    UpstreamResponse,
)
from gateway.errors import BadGateway, ClientDisconnected, GatewayError, GatewayTimeout
from gateway.http.headers import (
    RATE_LIMIT_HEADERS,
    REQUEST_ID,
    apply_rules,
    copy_end_to_end,
    stamp,
    strip_set,
)
from gateway.http.protocol import HttpConnection

log = structlog.get_logger("gateway.proxy")

# Bodies up to this size with a known length are read whole and sent with the head in one write;
# larger or open-ended ones stream.
_WHOLE_BODY_LIMIT = 64 * 1024

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


class ResponseRelay:
    """A route's way back to the client; its response header rules are bound here once."""

    def __init__(self, rules: HeaderRulesConfig) -> None:
        self._rules = (
            rules.response.remove,
            tuple(rules.response.set.items()),
            tuple(rules.response.add.items()),
        )
        self._has_rules = any(self._rules)

    async def __call__(
        self, pool: UpstreamPool, ctx: RequestContext, upstream: UpstreamResponse
    ) -> web.StreamResponse:
        """Send upstream's answer to the client; the caller closes upstream."""
        response = self._head(ctx, upstream)
        length = upstream.length  # its framing was judged on arrival
        capture = ctx.capture
        if capture is not None:
            capture.head(response.status, list(response.headers.items()))
        if length is not None and length <= _WHOLE_BODY_LIMIT:
            return await self._whole(ctx, upstream, response, length)
        connection = ctx.request.connection
        try:
            connection.send_head(ctx.request, response, length)
        except ConnectionError:
            raise ClientDisconnected() from None
        held: list[bytes] = []
        while True:
            try:
                chunk = await anext(upstream, b"")
            except UpstreamError as exc:
                # SECURITY/correctness: the status line is already sent. Close the client's
                # connection without the final chunk so it can never take a truncated body
                # for a complete one (a Content-Length body is short; a chunked one open).
                kind = "read_timeout" if isinstance(exc, UpstreamReadTimeout) else "body_truncated"
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
                connection.abort()
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
            await _send(connection, chunks, ctx)
        if capture is not None:
            await _finish_capture(capture)
            await _send(connection, held, ctx)
        try:
            await connection.end_body()
        except ConnectionError:
            raise ClientDisconnected() from None
        return response

    async def _whole(
        self,
        ctx: RequestContext,
        upstream: UpstreamResponse,
        response: _Relayed,
        length: int,
    ) -> web.StreamResponse:
        """A small body of known length: read it all, then send head and body in one write.

        Nothing has reached the client yet, so an upstream that fails mid-body gets a clean 502.
        """
        try:
            body = await upstream.read()
        except UpstreamError as exc:
            timeout = isinstance(exc, UpstreamReadTimeout)
            answer = GatewayTimeout() if timeout else BadGateway()
            raise UpstreamFailure(
                "read_timeout" if timeout else "body_truncated", answer, False, exc
            ) from None
        capture = ctx.capture
        if capture is not None:
            capture.add(body)
            await _finish_capture(capture)
        try:
            # The upstream's length, not the body's: a HEAD's answer has none.
            ctx.request.connection.send_head(ctx.request, response, length, body)
        except ConnectionError:
            raise ClientDisconnected() from None
        ctx.bytes_out = len(body)
        return response

    def _head(self, ctx: RequestContext, upstream: UpstreamResponse) -> _Relayed:
        """The client's response head; its framing is the connection's to write."""
        response = _Relayed(status=upstream.status, reason=upstream.reason.decode("latin-1"))
        # As the HTTP client decoded them before: UTF-8, a byte that is not as a raw byte,
        # which copy_end_to_end turns into the character it stands for in HTTP.
        source = [
            (name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))
            for name, value in upstream.headers
        ]
        connection = [value for name, value in source if name.lower() == "connection"]
        dropped = _RESPONSE_STRIPPED if ctx.rate_limit is None else _RESPONSE_STRIPPED_LIMITED
        copy_end_to_end(source, response.headers, dropped, connection)
        if self._has_rules:
            apply_rules(response.headers, *self._rules)
        stamp(response.headers, ctx.request_id, ctx.response_headers)
        return response


class _Relayed(web.StreamResponse):
    """The head of an upstream's answer, as the client gets it; the connection writes it
    (``HttpConnection.send_head``) with no header the upstream did not send but our own."""


async def _finish_capture(capture: ResponseCapture) -> None:
    # The upstream has answered in full: a plugin's hook failing (say, its store) must not
    # turn that answer into an error for the client.
    try:
        await capture.finish()
    except Exception:
        log.exception("capture_hook_failed")


async def _send(connection: HttpConnection, chunks: list[bytes], ctx: RequestContext) -> None:
    for chunk in chunks:
        try:
            await connection.send_body(chunk)
        except ConnectionError:
            raise ClientDisconnected() from None
        ctx.bytes_out += len(chunk)


def describe_failure(exc: BaseException) -> str:
    """An exception for the log, without the URL's query that some aiohttp messages quote.

    SECURITY: clients put tokens in query strings; the log never carries one.
    """
    return _QUERY.sub("", repr(exc))[:300]


_QUERY = re.compile(r"\?[^\s'\")]*")


class UpstreamFailure(Exception):
    """No answer reached the client: kind for the metric, answer for the client."""

    def __init__(
        self, kind: str, answer: GatewayError, retryable: bool, cause: BaseException
    ) -> None:
        self.kind = kind
        self.answer = answer
        self.retryable = retryable
        self.detail = describe_failure(cause)
        super().__init__(kind)


def classify_failure(exc: UpstreamError) -> UpstreamFailure:
    """The kind, answer and retry rule of a failure before the answer's head arrived.

    Only a failure to connect is retried on another target: the request never left.
    """
    if isinstance(exc, UpstreamConnectTimeout):
        return UpstreamFailure("connect_timeout", GatewayTimeout(), True, exc)
    if isinstance(exc, UpstreamConnectError):
        return UpstreamFailure("connect", BadGateway(), True, exc)
    if isinstance(exc, UpstreamReadTimeout):
        return UpstreamFailure("read_timeout", GatewayTimeout(), False, exc)
    if isinstance(exc, UpstreamDisconnected):
        return UpstreamFailure("disconnected", BadGateway(), False, exc)
    return UpstreamFailure("protocol", BadGateway(), False, exc)
