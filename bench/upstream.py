"""A minimal keep-alive HTTP/1.1 upstream for when nginx is not installed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import cast

BODY = b'{"ok":true}'
# One fixed answer: the upstream should cost as close to nothing as Python allows, so the
# contenders' numbers measure the proxies, not the backend.
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n" + BODY
)
# A request head longer than this is not one of ours; drop the connection rather than buffer.
MAX_HEAD = 64 * 1024


class FixedResponder(asyncio.Protocol):
    """Answers every request head with RESPONSE; request bodies are not expected."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # create_server over TCP always hands a full Transport; BaseTransport is the ABC's type.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        self.buffer += data
        answers = 0
        close = False
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].lower()
            self.buffer = self.buffer[end + 4 :]
            answers += 1
            # HTTP/1.0 and "Connection: close" clients expect the server to end the connection.
            if b"\r\nconnection: close" in head or head.split(b"\r\n", 1)[0].endswith(b"/1.0"):
                close = True
                break
        if answers:
            transport.write(RESPONSE * answers)
        if close:
            transport.close()
        elif len(self.buffer) > MAX_HEAD:
            transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(FixedResponder, "127.0.0.1", port, backlog=1024)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(args.port))


if __name__ == "__main__":
    main()
