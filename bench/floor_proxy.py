"""The least a Python proxy on asyncio can cost: the ceiling the gateway is measured under.

Raw Protocols on uvloop, llhttp (httptools) on both sides, a keep-alive upstream pool, and
nothing else: no checks, no header rules, no request ids, no metrics, no deadlines. It relays
bodiless requests only (the benchmark's GETs). It is not a proxy anyone should run; its
CPU per request is what the interpreter, the loop and the kernel take before any feature.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import deque
from typing import cast

import httptools
import uvloop

# Per hop, never relayed; the framing is written anew.
DROP = frozenset({b"connection", b"keep-alive", b"content-length", b"transfer-encoding"})


class Upstream(asyncio.Protocol):
    """One keep-alive connection to the upstream: one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.answer: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(ConnectionError("the upstream closed the connection"))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.answer is not None:
            self.answer.set_result(
                (self.parser.get_status_code(), self.headers, b"".join(self.body))
            )

    def exchange(
        self, head: bytes, loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]]:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("the upstream connection is closed")
        self.headers, self.body = [], []
        self.answer = loop.create_future()
        self.transport.write(head)
        return self.answer


class Client(asyncio.Protocol):
    """One client connection: each request head, forwarded as it came, in its own task."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        self.pool.loop.create_task(self.relay(method, self.url, self.headers))

    async def relay(self, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        lines = [method, b" ", url, b" HTTP/1.1\r\n"]
        lines += [n + b": " + v + b"\r\n" for n, v in headers if n.lower() not in DROP]
        lines.append(b"\r\n")
        upstream = await self.pool.take()
        status, answer, body = await upstream.exchange(b"".join(lines), self.pool.loop)
        self.pool.idle.append(upstream)
        out = [b"HTTP/1.1 %d OK\r\n" % status]
        out += [n + b": " + v + b"\r\n" for n, v in answer if n.lower() not in DROP]
        out.append(b"Content-Length: %d\r\n\r\n" % len(body))
        out.append(body)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))


class Pool:
    def __init__(self, host: str, port: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.host, self.port = host, port
        self.idle: deque[Upstream] = deque()

    async def take(self) -> Upstream:
        if self.idle:
            return self.idle.pop()
        _, upstream = await self.loop.create_connection(Upstream, self.host, self.port)
        return upstream


async def serve(port: int, upstream_port: int) -> None:
    pool = Pool("127.0.0.1", upstream_port)
    server = await pool.loop.create_server(lambda: Client(pool), "127.0.0.1", port)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.upstream_port))


if __name__ == "__main__":
    main()
