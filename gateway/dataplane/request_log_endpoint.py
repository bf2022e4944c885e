"""The request log for keys (``GET /v1/requests``): the caller's own org only, with the scope
``request_log.scope``; the same filters and answer as ``GET /admin/requests``, but ``org``."""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway.api.activity import (
    REQUEST_PARAMS,
    check_params,
    parse_limit,
    parse_query,
    request_filter,
    request_view,
)
from gateway.dataplane.chain import RequestContext
from gateway.errors import Unauthorized, Unavailable
from gateway.http.headers import stamp
from gateway.store import Store, StoreError

_PARAMS = REQUEST_PARAMS - {"org"}  # the org is the caller's


class RequestLogEndpoint:
    """Terminal handler of the data-plane request-log route; auth has checked key and scope."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def __call__(self, ctx: RequestContext) -> web.StreamResponse:
        identity = ctx.identity
        if identity is None:
            raise Unauthorized()
        query = parse_query(ctx.query)
        check_params(query, _PARAMS)
        where = request_filter(query, identity.org.id)
        try:
            page = await self.store.activity.query_requests(
                where, parse_limit(query), query.get("cursor")
            )
        except StoreError:
            raise Unavailable("The state store is unavailable; try again shortly.") from None
        body = orjson.dumps(
            {
                "data": [request_view(e, internal=False) for e in page.items],
                "meta": {"next_cursor": page.next_cursor, "request_id": ctx.request_id},
            }
        )
        ctx.bytes_out = len(body)
        response = web.Response(status=200, body=body, content_type="application/json")
        response.headers["Cache-Control"] = "no-store"
        stamp(response.headers, ctx.request_id, ctx.response_headers)
        return response
