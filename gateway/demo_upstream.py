"""A built-in echo backend, so the shipped gateway.yaml works with no other service running."""

from __future__ import annotations

import hashlib

import orjson
from aiohttp import web

# Headers the demo shows back: what a backend behind the gateway gets to see.
_SHOWN = ("host", "user-agent", "content-type", "content-length", "transfer-encoding")


async def echo(request: web.BaseRequest) -> web.Response:
    """Describe the request as a backend sees it; bodies are summarised, not stored."""
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        digest.update(chunk)
    body = {
        "service": "echo",
        "method": request.method,
        "path": request.raw_path.partition("?")[0],
        "query": request.query_string,
        "headers": {
            str(k): v
            for k, v in request.headers.items()
            if k.lower() in _SHOWN or k.lower().startswith("x-")
        },
        "body": {"bytes": size, "sha256": digest.hexdigest()},
    }
    return web.Response(
        body=orjson.dumps(body), content_type="application/json", headers={"Server": "echo"}
    )


class EchoServer:
    """Runs the echo backend on a loopback port of its own choosing."""

    def __init__(self) -> None:
        self._runner: web.ServerRunner | None = None
        self.url = ""

    async def start(self) -> str:
        self._runner = web.ServerRunner(web.Server(echo, access_log=None))
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
