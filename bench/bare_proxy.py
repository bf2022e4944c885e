"""A bare aiohttp pass-through: the floor any aiohttp-based gateway is measured against.

It reads each answer whole; with --stream (the download benchmark) it relays answers in pieces
instead, as any proxy must for a body larger than it wants to hold.
"""

import argparse
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

# Hop-by-hop headers, plus the framing ones web.Response recomputes for the buffered body.
DROP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te"}
DROP |= {"trailer", "upgrade", "content-length", "transfer-encoding", "content-encoding", "host"}
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def handle(request: web.Request) -> web.Response:
    body = await request.read()
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in DROP]
    session = request.app[SESSION]
    async with session.request(request.method, request.rel_url, headers=headers, data=body) as up:
        payload = await up.read()
        out = [(k, v) for k, v in up.headers.items() if k.lower() not in DROP]
        return web.Response(body=payload, status=up.status, headers=out)


async def handle_streaming(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in DROP]
    session = request.app[SESSION]
    async with session.request(request.method, request.rel_url, headers=headers, data=body) as up:
        out = [(k, v) for k, v in up.headers.items() if k.lower() not in DROP]
        response = web.StreamResponse(status=up.status, headers=out)
        if up.content_length is not None:
            response.content_length = up.content_length
        await response.prepare(request)
        async for chunk in up.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--stream", action="store_true", help="relay answers in pieces")
    args = parser.parse_args()

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        # auto_decompress=False: pass bodies through as encoded, like a proxy must.
        app[SESSION] = aiohttp.ClientSession(args.upstream, auto_decompress=False)
        yield
        await app[SESSION].close()

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", handle_streaming if args.stream else handle)
    loop = uvloop.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
