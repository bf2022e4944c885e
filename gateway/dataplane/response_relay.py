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
    SERVER,
    SERVER_NAME,
    Field,
    apply_field_rules,
    copy_end_to_end,
    encode_fields,
    wire_set,
)
from gateway.http.protocol import HttpConnection

log = structlog.get_logger("gateway.proxy")

# Bodies up to this size with a known length are read whole and sent with the head in one write;
# larger or open-ended ones stream.
_WHOLE_BODY_LIMIT = 64 * 1024

# SECURITY: CORS is the gateway's policy; a backend that reflects Origin must not widen it.
_RESPONSE_STRIPPED = wire_set(
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
_RESPONSE_STRIPPED_LIMITED = _RESPONSE_STRIPPED | wire_set(RATE_LIMIT_HEADERS)
_REQUEST_ID_WIRE = REQUEST_ID.lower().encode("ascii")


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
        fields = self._fields(ctx, upstream)
        response = _Relayed(status=upstream.status, reason="")
        length = upstream.length  # its framing was judged on arrival
        capture = ctx.capture
        if capture is not None:
            capture.head(
                upstream.status,
                [(n.decode("ascii"), v.decode("utf-8", "surrogateescape")) for n, v in fields],
            )
        if length is not None and length <= _WHOLE_BODY_LIMIT:
            return await self._whole(ctx, upstream, response, fields, length)
        connection = ctx.request.connection
        try:
            connection.send_head(ctx.request, upstream.status, upstream.reason, fields, length)
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
        fields: list[Field],
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
            ctx.request.connection.send_head(
                ctx.request, upstream.status, upstream.reason, fields, length, body
            )
        except ConnectionError:
            raise ClientDisconnected() from None
        ctx.bytes_out = len(body)
        return response

    def _fields(self, ctx: RequestContext, upstream: UpstreamResponse) -> list[Field]:
        """The client's response headers; the framing is the connection's to write."""
        dropped = _RESPONSE_STRIPPED if ctx.rate_limit is None else _RESPONSE_STRIPPED_LIMITED
        fields = copy_end_to_end(upstream.headers, dropped)
        if self._has_rules:
            fields = apply_field_rules(fields, *self._rules)
            # Ours alone, whatever a rule says (stamp sets it).
            fields = [f for f in fields if f[0].lower() != _REQUEST_ID_WIRE]
        ours = [(REQUEST_ID, ctx.request_id)]
        if not any(len(name) == 6 and name.lower() == b"server" for name, _ in fields):
            ours.append((SERVER, SERVER_NAME))
        ours += ctx.response_headers
        fields += encode_fields(ours)
        return fields


class _Relayed(web.StreamResponse):
    """What the chain and the access log see of an upstream's answer: its status. The head
    itself went to the connection (``HttpConnection.send_head``) as fields."""


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
