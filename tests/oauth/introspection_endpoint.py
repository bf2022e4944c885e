"""A test authorization server's introspection endpoint (RFC 7662) on 127.0.0.1: it checks the
gateway's Basic credentials, answers from a table, and fails on demand."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from aiohttp import web

from gateway.oauth import Claims, Introspector

CLIENT_ID = "api gateway"
SECRET = "s3:cr%t é"  # every character RFC 6749 2.3.1 says must be form-encoded first


@dataclass
class Introspection:
    """The authorization server's endpoint: token -> answer, and ways to fail."""

    url: str = ""
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    fail: str | None = None  # "503", "hang", "html", "401", "huge"
    forms: list[dict[str, str]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends a "gate"

    @property
    def calls(self) -> int:
        return len(self.forms)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.forms.append(form)
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        user, _, password = base64.b64decode(encoded).decode().partition(":")
        if scheme != "Basic" or (unquote_plus(user), unquote_plus(password)) != (
            CLIENT_ID,
            SECRET,
        ):
            return web.json_response({"error": "invalid_client"}, status=401)
        match self.fail:
            case "503":
                return web.Response(status=503)
            case "401":
                return web.json_response({"error": "invalid_client"}, status=401)
            case "hang":
                await asyncio.sleep(30)
            case "gate":
                await self.release.wait()
            case "html":
                return web.Response(text="<html>sign in</html>")
            case "huge":
                return web.json_response({"active": True, "pad": "x" * (128 * 1024)})
        return web.json_response(self.answers.get(form.get("token", ""), {"active": False}))


async def start_introspection(upstream_factory: Any) -> Introspection:
    """The endpoint served on 127.0.0.1 (stopped with the test's other upstreams)."""
    endpoint = Introspection()
    upstream = await upstream_factory(endpoint.handle, record=False)
    endpoint.url = f"{upstream.url}/introspect"
    return endpoint


async def check(introspector: Introspector, token: str) -> Claims:
    """What the introspector says of ``token`` (its hash computed as the gateway does)."""
    return await introspector.introspect(token, hashlib.sha256(token.encode()).digest())
