"""Built-in demo servers: an echo backend, so the shipped gateway.yaml works with no other
service running, and a webhook receiver, so deliveries can be watched on one machine."""

from __future__ import annotations

import hashlib
import hmac
import sys
from typing import TextIO

import orjson
from aiohttp import web

from gateway.webhooks.signing import signature

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


class WebhookReceiver:
    """Prints one line per delivery and checks its Standard Webhooks signature when it knows the
    endpoint's secret; a bad signature is answered 401, as a real receiver should."""

    def __init__(self, secret: str | None = None, status: int = 200, out: TextIO | None = None):
        self.secret = secret
        self.status = status
        self.out = out or sys.stdout

    def check(self, headers: dict[str, str], body: bytes) -> bool | None:
        """True or False for the signature; None without a secret to check it with."""
        if self.secret is None:
            return None
        try:
            expected = signature(
                self.secret, headers["webhook-id"], int(headers["webhook-timestamp"]), body
            )
        except (KeyError, ValueError):  # ValueError: a timestamp that is no number
            return False
        given = headers.get("webhook-signature", "").split()
        # SECURITY: compared in constant time, like a receiver must.
        return any(hmac.compare_digest(expected, g) for g in given)

    async def handle(self, request: web.BaseRequest) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        ok = self.check(headers, body)
        try:
            event = orjson.loads(body)
        except orjson.JSONDecodeError:
            event = None
        if isinstance(event, dict):
            what = f"{event.get('type', '?')} data {orjson.dumps(event.get('data')).decode()}"
        else:
            what = f"a body that is not a JSON event ({len(body)} bytes)"
        verdict = {True: "ok", False: "BAD", None: "not checked (pass --secret to check)"}[ok]
        print(
            f"{request.method} {request.raw_path} {headers.get('webhook-id', '-')} {what}"
            f" signature {verdict}",
            file=self.out,
            flush=True,
        )
        if ok is False:
            return web.Response(status=401, text="bad signature")
        return web.Response(status=self.status, text="received")

    async def start(self, host: str, port: int) -> tuple[web.ServerRunner, str]:
        runner = web.ServerRunner(web.Server(self.handle, access_log=None))
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        bound_host, bound_port = runner.addresses[0][:2]
        bound_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        return runner, f"http://{bound_host}:{bound_port}"
