"""The client's request body on its way upstream: streamed, limited, and watched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from gateway.dataplane.chain import RequestContext
from gateway.errors import ClientDisconnected, GatewayError, PayloadTooLarge, RequestTimeout
from gateway.http.request import Request


def expects_continue(request: Request) -> bool:
    """The client sent ``Expect: 100-continue`` and waits (a while) before sending its body."""
    return (
        request.version >= (1, 1)
        and request.headers.get("Expect", "").strip().lower() == "100-continue"
    )


def send_continue(ctx: RequestContext) -> None:
    """Answer ``Expect: 100-continue``: the client sends its body only after this.

    Called when the gateway is about to read the body, so a request refused before (401, 413,
    429), or by the upstream before it asked for the body, never gets it and its body is
    never sent; its answer then closes the connection (``http/server.py``).
    """
    request = ctx.request
    if request.continued or request.started or not expects_continue(request):
        return
    try:
        request.connection.send_interim(request, b"HTTP/1.1 100 Continue\r\n\r\n")
    except ConnectionError:
        raise ClientDisconnected() from None
    request.continued = True


async def read_body(ctx: RequestContext, limit: int, idle_seconds: float) -> bytes:
    """The whole request body, for a plugin that must see it before the upstream does.

    idle_seconds bounds each wait for the next piece, as for a streamed body.
    """
    request = ctx.request
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(limit)
    send_continue(ctx)
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            async with asyncio.timeout(idle_seconds):
                chunk = await request.content.readany()
        except TimeoutError:
            raise RequestTimeout() from None
        except (aiohttp.ClientError, ConnectionError, web.HTTPException):
            raise ClientDisconnected() from None
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(limit)
        chunks.append(chunk)
    ctx.bytes_in = size
    return b"".join(chunks)


class BodyRefused(Exception):
    """The client's body broke a rule; the reason is in the pump's failure."""


class BodyPump:
    """Feeds the client's body to the upstream request, counted against the route's limit.

    The body is sent from the handler's own task, so a failure reaches the proxy as an
    exception from the send; the pump records why (413, 408, a client that went away) in
    ``failure``, which is the answer the client gets.
    """

    __slots__ = ("_ctx", "_limit", "_timeout", "expect_continue", "failure")

    def __init__(self, ctx: RequestContext, limit: int, timeout: float) -> None:
        self._ctx = ctx
        self._limit = limit
        self._timeout = timeout
        self.failure: GatewayError | None = None
        # The client waits for a 100 Continue: so does the body towards the upstream, which
        # may answer without it (the client then never uploads it).
        self.expect_continue = expects_continue(ctx.request)

    def _fail(self, failure: GatewayError) -> None:
        self.failure = failure

    async def chunks(self) -> AsyncIterator[bytes]:
        ctx = self._ctx
        content = ctx.request.content
        try:
            send_continue(ctx)
        except ClientDisconnected as exc:
            self._fail(exc)
            raise
        while True:
            try:
                async with asyncio.timeout(self._timeout):
                    chunk = await content.readany()
            except TimeoutError:
                self._fail(RequestTimeout())
                raise
            except (aiohttp.ClientError, ConnectionError, web.HTTPException):
                self._fail(ClientDisconnected())
                raise
            if not chunk:
                return
            ctx.bytes_in += len(chunk)
            if ctx.bytes_in > self._limit:
                self._fail(PayloadTooLarge(self._limit))
                raise BodyRefused()
            yield chunk
