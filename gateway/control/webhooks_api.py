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

from gateway.api.audit import AuditTrail
from gateway.api.views import find_org
from gateway.control.listener import actor_of, json_response
from gateway.store import Store
from gateway.webhooks.service import WebhookService

# An audited route: its action, and how to read the record before (None: nothing to show).
Audited = tuple[str, Callable[[str, str | None], Awaitable[dict[str, Any]]] | None]


class WebhookAdmin:
    def __init__(self, service: WebhookService, store: Store, audit: AuditTrail) -> None:
        self.service = service
        self.store = store
        self.audit = audit

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        s = self.service
        endpoint = s.get_endpoint
        r.add_post(
            "/admin/orgs/{org}/webhooks", self._with_org(s.create_endpoint, 201, "webhook.create")
        )
        r.add_get("/admin/orgs/{org}/webhooks", self._with_org(s.list_endpoints))
        r.add_get("/admin/webhooks/{id}", self._by_id(s.get_endpoint))
        r.add_patch(
            "/admin/webhooks/{id}",
            self._by_id_body(s.update_endpoint, audit=("webhook.update", endpoint)),
        )
        r.add_delete(
            "/admin/webhooks/{id}",
            self._by_id(s.delete_endpoint, audit=("webhook.delete", endpoint)),
        )
        r.add_post(
            "/admin/webhooks/{id}/rotate",
            self._by_id_body(s.rotate_secret, 201, audit=("webhook.rotate", None)),
        )
        r.add_post(
            "/admin/webhooks/{id}/ping", self._by_id(s.ping, 202, audit=("webhook.ping", endpoint))
        )
        r.add_get("/admin/webhooks/{id}/deliveries", self._by_id(s.deliveries))
        r.add_get("/admin/deliveries/{id}", self._by_id(s.get_delivery))
        r.add_post(
            "/admin/deliveries/{id}/retry",
            self._by_id(s.retry_delivery, 202, audit=("delivery.retry", s.get_delivery)),
        )
        r.add_post("/admin/events", self.publish)

    async def _record(
        self,
        request: web.Request,
        action: str,
        target: str,
        before: dict[str, Any] | None,
        after: Any,
    ) -> None:
        after_view = after if isinstance(after, dict) else None
        org_id = (after_view or {}).get("orgId") or (before or {}).get("orgId")
        if org_id is None and action.startswith("delivery."):
            delivery = await self.store.webhooks.get_delivery(target)  # its view has no org
            org_id = delivery.org_id if delivery is not None else None
        await self.audit.record(
            actor_of(request),
            action,
            target=target,
            org_id=org_id,
            before=before,
            after=after_view,
        )

    def _with_org(
        self,
        operation: Callable[..., Awaitable[Any]],
        status: int = 200,
        action: str | None = None,
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            org = await find_org(self.store, request.match_info["org"])
            args: list[Any] = [org]
            if request.method == "POST":
                args.append(await request.read())
            result = await operation(*args)
            if action is not None:
                await self._record(request, action, result["id"], None, result)
            return json_response(result, status)

        return handler

    def _by_id(
        self,
        operation: Callable[[str, str | None], Awaitable[Any]],
        status: int = 200,
        *,
        audit: Audited | None = None,
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            target = request.match_info["id"]
            return await self._audited(
                request, audit, target, status, lambda: operation(target, None)
            )

        return handler

    def _by_id_body(
        self,
        operation: Callable[[str, str | None, bytes], Awaitable[Any]],
        status: int = 200,
        *,
        audit: Audited | None = None,
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            target = request.match_info["id"]
            raw = await request.read()
            return await self._audited(
                request, audit, target, status, lambda: operation(target, None, raw)
            )

        return handler

    async def _audited(
        self,
        request: web.Request,
        audit: Audited | None,
        target: str,
        status: int,
        operation: Callable[[], Awaitable[Any]],
    ) -> web.Response:
        """The operation's answer; with ``audit`` (its action, and how to read the record
        before), also its audit entry. The record before is read first: a change a moment
        later by someone else is their own entry."""
        if audit is None:
            return json_response(await operation(), status)
        action, read_before = audit
        before = await read_before(target, None) if read_before is not None else None
        result = await operation()
        await self._record(request, action, target, before, result)
        return json_response(result, status)

    async def publish(self, request: web.Request) -> web.Response:
        raw = await request.read()
        return json_response(await self.service.publish_from_admin(raw), 202)
