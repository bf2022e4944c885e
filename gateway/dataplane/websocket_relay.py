"""A WebSocket's bytes both ways after its handshake, unparsed: back-pressure both ways, an
idle and a total deadline, an end when the server drains. ``websocket`` starts it."""

from __future__ import annotations

import asyncio

from gateway.dataplane.websocket_upstream import UpstreamSide
from gateway.http.request import Request

# A side that ends the session gets this long to take the bytes still queued for it; a peer
# that never reads cannot keep a socket open past it.
_LINGER = 5.0


class Relay:
    """Bytes both ways between the client's connection, taken over after the 101,
    and the upstream's, until either closes, a deadline passes or the server drains."""

    def __init__(self, request: Request, upstream: UpstreamSide) -> None:
        transport = request.transport
        if transport is None or upstream.transport is None:
            raise ConnectionResetError("a side of the WebSocket closed before the relay")
        self._loop = asyncio.get_running_loop()
        self._client = request.connection
        self._client_transport = transport
        self._upstream = upstream
        self._upstream_transport = upstream.transport
        self.bytes_in = self.bytes_out = 0
        self.outcome: str | None = None
        self._last = self._loop.time()
        self._waiter: asyncio.Future[None] | None = None
        self._upstream_paused = False  # the client is not taking bytes: stop reading upstream

    async def run(self, idle: float, total: float) -> str:
        """Relay until the session ends; returns how it ended (a metric label)."""
        self._start()
        loop = self._loop
        end = loop.time() + total
        try:
            while self.outcome is None:
                now = loop.time()
                deadline = min(end, self._last + idle)
                if now >= deadline:
                    self.outcome = "total_timeout" if now >= end else "idle_timeout"
                    break
                if self._upstream_paused:
                    await self._drain(deadline)
                else:
                    await self._wait(deadline)
        finally:
            if self.outcome is None:  # cancelled: the server stopped waiting for us
                self.outcome = "shutdown"
            _close(self._loop, self._upstream_transport)
            _close(self._loop, self._client_transport)
        return self.outcome

    def _start(self) -> None:
        upstream = self._upstream
        upstream.relay = self
        tail, upstream.tail = upstream.tail, b""
        if tail:
            self.from_upstream(tail)
        if upstream.closed:
            self.finish("upstream_closed")
        elif not self._upstream_paused:
            self._upstream_transport.resume_reading()
        # Every byte the client sends from here on goes to feed_data, its end to feed_eof.
        self._client.take_over(self, self.shut_down)

    # The client's side, called by its connection.

    def feed_data(self, data: bytes) -> None:
        if data and self.outcome is None and not self._upstream_transport.is_closing():
            self.bytes_in += len(data)
            self._last = self._loop.time()
            self._upstream_transport.write(data)

    def feed_eof(self) -> None:
        self.finish("client_closed")

    # The upstream's side.

    def from_upstream(self, data: bytes) -> None:
        if self._client_transport.is_closing():
            return
        self.bytes_out += len(data)
        self._last = self._loop.time()
        self._client_transport.write(data)
        if self._client.writing_paused and not self._upstream_paused:
            # The client lags: stop reading the upstream rather than queue its stream here.
            self._upstream_paused = True
            self._upstream_transport.pause_reading()
            self._wake()

    def pause_client(self) -> None:
        """The upstream lags: stop reading the client."""
        self._client_transport.pause_reading()

    def resume_client(self) -> None:
        self._client_transport.resume_reading()

    def shut_down(self) -> None:
        self.finish("shutdown")

    def finish(self, outcome: str) -> None:
        if self.outcome is None:
            self.outcome = outcome
        if outcome == "shutdown":
            # Now, and without lingering: a peer that does not read must not hold the drain.
            _close(self._loop, self._upstream_transport, linger=0.0)
            _close(self._loop, self._client_transport, linger=0.0)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, deadline: float) -> None:
        waiter = self._waiter = self._loop.create_future()
        handle = self._loop.call_at(deadline, self._wake)
        try:
            await waiter
        finally:
            handle.cancel()
            self._waiter = None

    async def _drain(self, deadline: float) -> None:
        """Wait for the client to take what it was sent, then read the upstream again."""
        try:
            async with asyncio.timeout_at(deadline):
                await self._client.drain()
        except TimeoutError:
            return  # the deadline decides, in run()
        except ConnectionError:
            self.finish("client_closed")
            return
        self._upstream_paused = False
        if not self._upstream_transport.is_closing():
            self._upstream_transport.resume_reading()


def _close(
    loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, linger: float = _LINGER
) -> None:
    """Close once what is queued was sent, if that takes less than ``linger``; else at once."""
    if transport.is_closing():
        return
    if not transport.get_write_buffer_size():
        transport.close()
    elif linger <= 0:
        transport.abort()
    else:
        transport.close()
        loop.call_later(linger, transport.abort)
