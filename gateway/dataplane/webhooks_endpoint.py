"""The webhook endpoints for keys (``/v1/webhooks``): the caller's org only, webhooks:write.

Under webhooks.api_path:
    GET|POST /, GET|PATCH|DELETE /{id}, POST /{id}/rotate, POST /{id}/ping,
    GET /{id}/deliveries, GET /{id}/deliveries/{delivery}, POST /{id}/deliveries/{delivery}/retry.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.api.audit import AuditTrail
from gateway.api.limits import limits_view
from gateway.dataplane.chain import RequestContext
from gateway.dataplane.request_body import read_body
from gateway.errors import MethodNotAllowed, RouteNotFound, Unauthorized, Unavailable
from gateway.http.headers import stamp
from gateway.store import Org, StoreError
from gateway.webhooks.service import WebhookService

_MAX_BODY = 64 * 1024  # endpoint bodies are small; events have their own, larger limit


class WebhookEndpointsApi:
    """Terminal handler of the data-plane webhook routes; auth has checked the key and scope."""

    def __init__(
        self,
        service: WebhookService,
        base_path: str,
        body_timeout: float,
        audit: AuditTrail | None = None,
    ) -> None:
        self.service = service
        self.base = base_path
        self.body_timeout = body_timeout
        self.audit = audit  # a key's changes are on record like an admin's

    async def __call__(self, ctx: RequestContext) -> web.StreamResponse:
        identity = ctx.identity
        if identity is None:
            raise Unauthorized()
        org = identity.org
        parts = [p for p in ctx.path[len(self.base) :].split("/") if p]
        method = ctx.method
        s = self.service
        try:
            before = await self._before(s, org, parts, method)
            status, data = await self._route(s, org, parts, method, ctx)
            await self._audit(identity.actor, org, parts, method, before, data)
        except StoreError:
            raise Unavailable("The state store is unavailable; try again shortly.") from None
        meta: dict[str, Any] = {"request_id": ctx.request_id}
        if not parts and method == "GET":  # the list says how many more the plan allows
            meta["limits"] = {"webhookEndpoints": {"limit": s.endpoint_cap(org), "used": len(data)}}
        plan = s.config.plans.get(org.plan)
        limits = limits_view(plan, identity.rate_limit)
        body = orjson.dumps({"data": data, "limits": limits, "meta": meta})
        ctx.bytes_out = len(body)
        response = web.Response(status=status, body=body, content_type="application/json")
        response.headers["Cache-Control"] = "no-store"
        stamp(response.headers, ctx.request_id, ctx.response_headers)
        return response

    async def _before(
        self, s: WebhookService, org: Org, parts: list[str], method: str
    ) -> dict[str, Any] | None:
        """The endpoint before a change to it or a delete, for the audit log."""
        if self.audit is None or len(parts) != 1 or method not in ("PATCH", "DELETE"):
            return None
        return await s.get_endpoint(parts[0], org.id)

    async def _audit(
        self,
        actor: str,
        org: Org,
        parts: list[str],
        method: str,
        before: dict[str, Any] | None,
        after: Any,
    ) -> None:
        if self.audit is None or method == "GET":
            return
        match parts:
            case []:
                action, target = "webhook.create", after["id"]
            case [endpoint_id]:
                action = "webhook.update" if method == "PATCH" else "webhook.delete"
                target = endpoint_id
            case [endpoint_id, verb]:  # rotate, ping
                action, target = f"webhook.{verb}", endpoint_id
            case [_, "deliveries", delivery_id, "retry"]:
                action, target = "delivery.retry", delivery_id
            case _:
                return
        await self.audit.record(
            actor,
            action,
            target=target,
            org_id=org.id,
            before=before,
            after=after if isinstance(after, dict) else None,
        )

    async def _read(self, ctx: RequestContext) -> bytes:
        return await read_body(ctx, _MAX_BODY, self.body_timeout)

    async def _route(
        self, s: WebhookService, org: Org, parts: list[str], method: str, ctx: RequestContext
    ) -> tuple[int, Any]:
        match parts:
            case []:
                if method == "GET":
                    return 200, await s.list_endpoints(org)
                if method == "POST":
                    return 201, await s.create_endpoint(org, await self._read(ctx))
                raise MethodNotAllowed(["GET", "POST"])
            case [endpoint_id]:
                if method == "GET":
                    return 200, await s.get_endpoint(endpoint_id, org.id)
                if method == "PATCH":
                    return 200, await s.update_endpoint(endpoint_id, org.id, await self._read(ctx))
                if method == "DELETE":
                    return 200, await s.delete_endpoint(endpoint_id, org.id)
                raise MethodNotAllowed(["GET", "PATCH", "DELETE"])
            case [endpoint_id, "rotate"]:
                _only(method, "POST")
                return 201, await s.rotate_secret(endpoint_id, org.id, await self._read(ctx))
            case [endpoint_id, "ping"]:
                _only(method, "POST")
                return 202, await s.ping(endpoint_id, org.id)
            case [endpoint_id, "deliveries"]:
                _only(method, "GET")
                return 200, await s.deliveries(endpoint_id, org.id)
            case [endpoint_id, "deliveries", delivery_id]:
                _only(method, "GET")
                return 200, await s.get_delivery(delivery_id, org.id, endpoint_id)
            case [endpoint_id, "deliveries", delivery_id, "retry"]:
                _only(method, "POST")
                await s.get_delivery(delivery_id, org.id, endpoint_id)
                return 202, await s.retry_delivery(delivery_id, org.id)
        raise RouteNotFound()


def _only(method: str, allowed: str) -> None:
    if method != allowed:
        raise MethodNotAllowed([allowed])
