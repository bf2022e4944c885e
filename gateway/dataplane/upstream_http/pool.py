"""A keep-alive pool of connections to one upstream target: bounded, with idle expiry."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from ssl import SSLContext
from typing import TypeVar

from gateway.dataplane.upstream_http.connection import Body, Header, UpstreamConnection
from gateway.dataplane.upstream_http.errors import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamDisconnected,
)
from gateway.dataplane.upstream_http.response import UpstreamResponse, within

_P = TypeVar("_P", bound=asyncio.BaseProtocol)


class TargetPool:
    """Connections to one ``host:port``, reused most-recent first.

    At most ``max_connections`` exist at once (in use, idle or opening); a request beyond that
    waits for one, within the connect timeout. An idle connection older than ``idle_timeout``
    is closed rather than reused, since upstreams close theirs after a while and the one we
    would pick is then the likeliest to be dead. ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_connections: int = 100,
        idle_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_head_size: int = 64 * 1024,
        high_water: int = 256 * 1024,
        ssl: SSLContext | None = None,
        server_name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.host = host
        self.port = port
        name = f"[{host}]" if ":" in host else host
        self.authority = f"{name}:{port}".encode("idna" if not host.isascii() else "ascii")
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._max_head = max_head_size
        self._high = high_water
        self._ssl = ssl
        # The name sent in SNI and checked against the certificate: the host unless told.
        self._server_name = (server_name or host) if ssl is not None else None
        self._clock = clock
        self._idle: deque[UpstreamConnection] = deque()
        self._conns: set[UpstreamConnection] = set()
        self._opening = 0
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self._closed = False

    @property
    def size(self) -> int:
        """Connections open or opening, idle or in use."""
        return len(self._conns) + self._opening

    @property
    def waiting(self) -> int:
        """Requests queued for a connection because the pool is at its limit."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    @property
    def idle(self) -> int:
        return sum(1 for conn in self._idle if not conn.closed)

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: Sequence[Header],
        body: Body = None,
        *,
        content_length: int | None = None,
        idempotent: bool = False,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        expect_continue: bool = False,
    ) -> UpstreamResponse:
        """Send a request on a pooled connection; see ``UpstreamConnection.request``.

        A Host header naming the target is added unless ``headers`` has one. The timeouts
        default to the pool's; a caller passes its own when they differ per request (routes
        sharing one target may set their own).
        """
        if not any(len(name) == 4 and name.lower() == b"host" for name, _ in headers):
            headers = [(b"Host", self.authority), *headers]
        timeout = self.read_timeout if read_timeout is None else read_timeout
        connect = self.connect_timeout if connect_timeout is None else connect_timeout
        fresh, first_sent = False, False
        while True:
            conn = await self._acquire(fresh=fresh, limit=connect)
            try:
                return await conn.request(
                    method,
                    target,
                    headers,
                    body,
                    content_length=content_length,
                    read_timeout=timeout,
                    expect_continue=expect_continue,
                )
            except UpstreamDisconnected as exc:
                exc.sent = exc.sent or first_sent  # a first attempt may have reached it
                # The keep-alive race: the upstream closed a connection we were reusing, before
                # any answer. Once more on a fresh connection, only if that cannot make it act
                # twice: nothing was sent, or the method is idempotent and the body can be sent
                # again.
                replayable = body is None or isinstance(body, bytes)
                if (
                    fresh
                    or not conn.reused
                    or exc.received
                    or (exc.sent and not (idempotent and replayable))
                ):
                    raise
                fresh, first_sent = True, exc.sent

    async def close(self) -> None:
        """Close every connection and refuse further requests; waiters fail at once."""
        self._closed = True
        for conn in list(self._conns):
            conn.abort()
        self._idle.clear()
        while self._waiters:
            wake_waiter = self._waiters.popleft()
            if not wake_waiter.done():
                wake_waiter.set_result(True)

    async def _acquire(self, *, fresh: bool, limit: float) -> UpstreamConnection:
        if not (fresh or self._closed):
            conn = self._pop_idle()
            if conn is not None:
                return conn  # the common case: no clock, no loop lookup (a getpid() on 3.11)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while True:
            if self._closed:
                raise UpstreamConnectError("the upstream pool is closed", sent=False)
            if not fresh:
                conn = self._pop_idle()
                if conn is not None:
                    return conn
            if self.size < self.max_connections:
                return await self._open(deadline - loop.time(), limit)
            if fresh and self._idle:
                self._idle.popleft().close()  # make room: a new connection is what we need
                continue
            waiter: asyncio.Future[bool] = loop.create_future()
            self._waiters.append(waiter)
            try:
                woken = await within(waiter, max(0.0, deadline - loop.time()))
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.result():
                    self._wake_one()  # pass on the slot we were given
                else:
                    _discard(self._waiters, waiter)
                raise
            if not woken:
                _discard(self._waiters, waiter)
                raise UpstreamConnectTimeout(
                    f"no free connection to {self.host}:{self.port} within {limit} s",
                    sent=False,
                )

    async def connect(self, factory: Callable[[], _P], limit: float) -> _P:
        """A connection with this pool's TLS settings that the pool will not keep: one that
        will carry another protocol (a WebSocket) is never pooled."""
        return await self._connect(factory, limit, limit)

    async def _connect(self, factory: Callable[[], _P], remaining: float, limit: float) -> _P:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                _, protocol = await loop.create_connection(
                    factory,
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self._server_name,
                )
        except TimeoutError:
            raise UpstreamConnectTimeout(
                f"no connection to {self.host}:{self.port} within {limit} s",
                sent=False,
            ) from None
        except OSError as exc:
            raise UpstreamConnectError(
                f"cannot connect to {self.host}:{self.port}: {exc}", sent=False
            ) from None
        return protocol

    async def _open(self, remaining: float, limit: float) -> UpstreamConnection:
        self._opening += 1
        conn: UpstreamConnection | None = None
        try:
            conn = await self._connect(self._new_connection, remaining, limit)
            if not self._closed:
                self._conns.add(conn)  # in the same step as _opening drops: the slot stays taken
        finally:
            self._opening -= 1
            if conn is None:
                self._wake_one()  # a failed open frees its slot for a waiter
        if self._closed:
            conn.abort()
            raise UpstreamConnectError("the upstream pool is closed", sent=False)
        return conn

    def _new_connection(self) -> UpstreamConnection:
        return UpstreamConnection(
            max_head_size=self._max_head,
            high_water=self._high,
            on_idle=self._release,
            on_close=self._forget,
        )

    def _pop_idle(self) -> UpstreamConnection | None:
        now = self._clock()
        while self._idle:
            conn = self._idle.pop()
            if conn.closed:
                continue  # the upstream closed it while it waited here
            if now - conn.idle_since >= self.idle_timeout:
                conn.close()
                continue
            conn.reused = True
            return conn
        return None

    def _release(self, conn: UpstreamConnection) -> None:
        if self._closed:
            conn.close()
            return
        now = self._clock()
        conn.idle_since = now
        self._idle.append(conn)
        idle = self._idle
        # Expire from the old end here too, so idle connections do not outlive their time
        # just because no request came to pick them.
        while idle and (idle[0].closed or now - idle[0].idle_since >= self.idle_timeout):
            idle.popleft().close()
        self._wake_one()

    def _forget(self, conn: UpstreamConnection) -> None:
        if conn in self._conns:
            self._conns.discard(conn)
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return


def _discard(waiters: deque[asyncio.Future[bool]], waiter: asyncio.Future[bool]) -> None:
    with contextlib.suppress(ValueError):  # already taken off by the one who woke it
        waiters.remove(waiter)
