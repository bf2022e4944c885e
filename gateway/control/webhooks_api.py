"""The admin API's webhook endpoints: any org's endpoints, deliveries and events.

POST /admin/orgs/{org}/webhooks, GET /admin/orgs/{org}/webhooks,
GET|PATCH|DELETE /admin/webhooks/{id}, POST /admin/webhooks/{id}/rotate,
POST /admin/webhooks/{id}/ping, GET /admin/webhooks/{id}/deliveries,
GET /admin/deliveries/{id}, POST /admin/deliveries/{id}/retry, POST /admin/events.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.api.views import find_org
from gateway.control.listener import json_response
from gateway.store import Store
from gateway.webhooks.service import WebhookService


class WebhookAdmin:
    def __init__(self, service: WebhookService, store: Store) -> None:
        self.service = service
        self.store = store

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        s = self.service
        r.add_post("/admin/orgs/{org}/webhooks", self._with_org(s.create_endpoint, 201))
        r.add_get("/admin/orgs/{org}/webhooks", self._with_org(s.list_endpoints))
        r.add_get("/admin/webhooks/{id}", self._by_id(s.get_endpoint))
        r.add_patch("/admin/webhooks/{id}", self._by_id_body(s.update_endpoint))
        r.add_delete("/admin/webhooks/{id}", self._by_id(s.delete_endpoint))
        r.add_post("/admin/webhooks/{id}/rotate", self._by_id_body(s.rotate_secret, 201))
        r.add_post("/admin/webhooks/{id}/ping", self._by_id(s.ping, 202))
        r.add_get("/admin/webhooks/{id}/deliveries", self._by_id(s.deliveries))
        r.add_get("/admin/deliveries/{id}", self._by_id(s.get_delivery))
        r.add_post("/admin/deliveries/{id}/retry", self._by_id(s.retry_delivery, 202))
        r.add_post("/admin/events", self.publish)

    def _with_org(
        self, operation: Callable[..., Awaitable[Any]], status: int = 200
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            org = await find_org(self.store, request.match_info["org"])
            args: list[Any] = [org]
            if request.method == "POST":
                args.append(await request.read())
            return json_response(await operation(*args), status)

        return handler

    def _by_id(
        self, operation: Callable[[str, str | None], Awaitable[Any]], status: int = 200
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            return json_response(await operation(request.match_info["id"], None), status)

        return handler

    def _by_id_body(
        self, operation: Callable[[str, str | None, bytes], Awaitable[Any]], status: int = 200
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            raw = await request.read()
            return json_response(await operation(request.match_info["id"], None, raw), status)

        return handler

    async def publish(self, request: web.Request) -> web.Response:
        raw = await request.read()
        return json_response(await self.service.publish_from_admin(raw), 202)
