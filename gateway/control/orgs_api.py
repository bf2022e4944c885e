"""The admin API's org endpoints: create, list, show and change orgs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from pydantic import Field, ValidationInfo, field_validator

from gateway.api.attributes import Attributes
from gateway.api.audit import AuditTrail
from gateway.api.bodies import B, Body, parse_body
from gateway.api.views import NotFound, find_org, org_view
from gateway.config import GatewayConfig
from gateway.config.types import check_slug
from gateway.control.listener import actor_of, json_response
from gateway.store import Org, Store, prefixed_id

Clock = Callable[[], float]


def _plan_known(value: str, info: ValidationInfo) -> str:
    plans = (info.context or {}).get("plans", ())
    if value not in plans:
        raise ValueError(f"unknown plan {value!r} (known: {', '.join(plans)})")
    return value


class CreateOrg(Body):
    slug: str = Field(description="Lower-case letters, digits and '-'; used in URLs.")
    name: str = Field(min_length=1, max_length=200)
    plan: str
    attributes: Attributes = Field(default_factory=dict)

    _slug = field_validator("slug")(check_slug)

    _plan = field_validator("plan")(_plan_known)


class UpdateOrg(Body):
    name: str | None = Field(None, min_length=1, max_length=200)
    plan: str | None = None
    attributes: Attributes | None = Field(
        None, description="Replaces all of the org's attributes; {} or null removes them."
    )

    @field_validator("plan")
    @classmethod
    def _plan(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _plan_known(value, info)


class OrgsApi:
    """The org endpoints; the admin app's middleware handles auth and errors."""

    def __init__(
        self, store: Store, config: GatewayConfig, audit: AuditTrail, *, clock: Clock = time.time
    ) -> None:
        self.store = store
        self.config = config  # replaced on a reload: the plans an org may be on
        self.audit = audit
        self.clock = clock

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/admin/orgs", self.create_org)
        r.add_get("/admin/orgs", self.list_orgs)
        r.add_get("/admin/orgs/{org}", self.get_org)
        r.add_patch("/admin/orgs/{org}", self.update_org)

    async def _body(self, request: web.Request, model: type[B]) -> B:
        context: dict[str, Any] = {"plans": list(self.config.plans)}
        return parse_body(await request.read(), model, context)

    async def create_org(self, request: web.Request) -> web.Response:
        body = await self._body(request, CreateOrg)
        org = Org(
            prefixed_id(self.config.ids.org),
            body.slug,
            body.name,
            body.plan,
            self.clock(),
            attributes=dict(body.attributes),
        )
        await self.store.create_org(org)
        view = org_view(org)
        await self.audit.record(
            actor_of(request), "org.create", target=org.id, org_id=org.id, after=view
        )
        return json_response(view, 201)

    async def list_orgs(self, request: web.Request) -> web.Response:
        return json_response([org_view(o) for o in await self.store.list_orgs()])

    async def get_org(self, request: web.Request) -> web.Response:
        org = await find_org(self.store, request.match_info["org"])
        return json_response(org_view(org))

    async def update_org(self, request: web.Request) -> web.Response:
        org = await find_org(self.store, request.match_info["org"])
        body = await self._body(request, UpdateOrg)

        changes: dict[str, Any] = {}
        if body.name is not None:
            changes["name"] = body.name
        if body.plan is not None:
            changes["plan"] = body.plan
        if "attributes" in body.model_fields_set:
            changes["attributes"] = dict(body.attributes or {})

        def change(current: Org) -> Org:
            return current.with_changes(**changes)

        before: Org | None = None

        def change_and_keep(current: Org) -> Org:
            nonlocal before  # the org as it was in the atomic step, for the audit log
            before = current
            return change(current)

        changed = await self.store.update_org(org.id, change_and_keep)
        if changed is None or before is None:
            raise NotFound(f"No org {org.id!r}.")
        view = org_view(changed)
        await self.audit.record(
            actor_of(request),
            "org.update",
            target=org.id,
            org_id=org.id,
            before=org_view(before),
            after=view,
        )
        return json_response(view)
