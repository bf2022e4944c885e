"""The client's request body on its way upstream: streamed, limited, and watched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from gateway.errors import ClientDisconnected, GatewayError, PayloadTooLarge, RequestTimeout
from gateway.pipeline import RequestContext


class BodyRefused(Exception):
    """The client's body broke a rule; the reason is in the pump's failure."""


class BodyPump:
    """Feeds the client's body to the upstream request, counted against the route's limit.

    The HTTP client sends the body from a task of its own and, when the body fails, neither
    aborts the exchange nor says why. So the pump records the reason (413, 408, a client that
    went away) and cancels the handler that waits for the upstream's answer, unless that answer
    has already begun.
    """

    __slots__ = (
        "_ctx",
        "_expect_continue",
        "_handler",
        "_limit",
        "_timeout",
        "cancelled_handler",
        "failure",
        "response_started",
    )

    def __init__(self, ctx: RequestContext, limit: int, timeout: float) -> None:
        self._ctx = ctx
        # The client waits for "100 Continue" before sending its body; it is sent only now,
        # when the gateway has accepted the request and is about to read the body.
        self._expect_continue = ctx.request.version >= (1, 1) and (
            ctx.request.headers.get("Expect", "").strip().lower() == "100-continue"
        )
        self._limit = limit
        self._timeout = timeout
        self._handler = asyncio.current_task()
        self.failure: GatewayError | None = None
        self.response_started = False
        self.cancelled_handler = False

    def _fail(self, failure: GatewayError) -> None:
        self.failure = failure
        if not self.response_started and self._handler is not None:
            self.cancelled_handler = True
            self._handler.cancel()

    async def chunks(self) -> AsyncIterator[bytes]:
        ctx = self._ctx
        content = ctx.request.content
        if self._expect_continue:
            writer = ctx.request.writer
            try:
                await writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            except ConnectionError:
                self._fail(ClientDisconnected())
                raise
            writer.output_size = 0  # the interim answer is not part of the response
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
