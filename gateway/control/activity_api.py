"""The admin API's activity endpoints: GET /admin/requests, /admin/usage and /admin/audit."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from aiohttp import web

from gateway.api.activity import (
    AUDIT_PARAMS,
    REQUEST_PARAMS,
    USAGE_PARAMS,
    audit_filter,
    audit_view,
    check_params,
    parse_limit,
    request_filter,
    request_view,
    usage_view,
    usage_window,
)
from gateway.api.views import NotFound, find_org
from gateway.config import GatewayConfig
from gateway.ratelimit.backends import LimiterError
from gateway.ratelimit.plan_limits import plan_limits, prefix_of
from gateway.ratelimit.policy import Decision, Limit, Outcome
from gateway.store import ApiKey, Org, Store, StoreError

LimitState = Callable[[Sequence[Limit]], Awaitable[Decision]]


def page_response(items: list[dict[str, Any]], next_cursor: str | None) -> web.Response:
    body = orjson.dumps({"data": items, "meta": {"next_cursor": next_cursor}})
    return web.Response(body=body, content_type="application/json")


class ActivityApi:
    def __init__(
        self, store: Store, config: GatewayConfig, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.config = config  # replaced on a reload: the plans usage shows limits of
        self.clock = clock
        # Where limits stand, counted as nothing (cost 0); set by whoever has the limiter.
        self.limit_state: LimitState | None = None

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/admin/requests", self.requests)
        r.add_get("/admin/usage", self.usage)
        r.add_get("/admin/audit", self.audit)

    async def _org_id(self, request: web.Request) -> str | None:
        ref = request.query.get("org")
        return None if ref is None else (await find_org(self.store, ref)).id

    async def requests(self, request: web.Request) -> web.Response:
        query = request.query
        check_params(query, REQUEST_PARAMS)
        where = request_filter(query, await self._org_id(request))
        page = await self.store.activity.query_requests(
            where, parse_limit(query), query.get("cursor")
        )
        return page_response([request_view(e) for e in page.items], page.next_cursor)

    async def usage(self, request: web.Request) -> web.Response:
        query = request.query
        check_params(query, USAGE_PARAMS)
        bucket, since, until = usage_window(query, self.clock())
        org_id = await self._org_id(request)
        key_id = query.get("key")
        key: ApiKey | None = None
        if key_id is not None:
            key = await self.store.get_key(key_id)
            if key is None or (org_id is not None and key.org_id != org_id):
                raise NotFound(f"No key {key_id!r}" + (" in this org." if org_id else "."))
            org_id = key.org_id
        limits: dict[str, Any] | None = None
        if org_id is not None:
            org = await self.store.get_org(org_id)
            if org is not None:
                limits = await self._limits(org, key)
        buckets = await self.store.activity.usage(
            bucket, since, until, org_id=org_id, key_id=key_id
        )
        body = {
            "data": [usage_view(b) for b in buckets],
            "meta": {"bucket": bucket, "limits": limits},
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _limits(self, org: Org, key: ApiKey | None) -> dict[str, Any]:
        """The org's plan, and where its limits (and the key's) stand now, without counting."""
        plan = self.config.plans.get(org.plan)
        view: dict[str, Any] = {"plan": org.plan, "state": None}
        if plan is None:
            return view
        dumped = plan.model_dump(mode="json")
        view.update(
            rateLimit=dumped["rate_limit"],
            orgRateLimit=dumped["org_rate_limit"],
            quota=dumped["quota"],
        )
        if key is not None and key.rate_limit:
            view["keyRateLimit"] = key.rate_limit
        limits = plan_limits(
            prefix_of(self.config.store.key_prefix),
            org.id,
            plan,
            self.clock(),
            key_id=None if key is None else key.id,
            override=None if key is None else key.rate_limit,
        )
        if self.limit_state is None or not limits:
            return view
        try:
            decision = await self.limit_state(limits)
        except (LimiterError, StoreError):
            return view  # the counts still answer; the state is null while the store is away
        view["state"] = [_outcome_view(o) for o in decision.outcomes]
        return view

    async def audit(self, request: web.Request) -> web.Response:
        query = request.query
        check_params(query, AUDIT_PARAMS)
        where = audit_filter(query, await self._org_id(request))
        page = await self.store.activity.query_audit(where, parse_limit(query), query.get("cursor"))
        return page_response([audit_view(e) for e in page.items], page.next_cursor)


def _outcome_view(outcome: Outcome) -> dict[str, Any]:
    return {
        "policy": outcome.policy,
        "limit": outcome.limit,
        "windowSeconds": outcome.window,
        "remaining": outcome.remaining,
        "resetSeconds": round(outcome.reset, 3),
    }
