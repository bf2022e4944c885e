"""The admin API's key endpoints: create, list, show, change, revoke and rotate API keys."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from aiohttp import web
from pydantic import Field, field_validator

from gateway.api.attributes import Attributes
from gateway.api.audit import AuditTrail
from gateway.api.bodies import B, Body, parse_body
from gateway.api.bounds import Grace, KeyExpiry, RateLimitOverride
from gateway.api.views import NotFound, find_org, key_view
from gateway.config import GatewayConfig
from gateway.config.types import check_scope, parse_network
from gateway.control.listener import actor_of, json_response
from gateway.errors import ApiAccessDisabled, BadRequest, GatewayError
from gateway.keys.secrets import KeyFormat
from gateway.store import ApiKey, Org, Store, prefixed_id

Clock = Callable[[], float]
# Called after a key is created, revoked or rotated (key.created, ...), for webhooks.
KeyEventHook = Callable[[str, ApiKey], Awaitable[None]]


class KeyNotRotatable(GatewayError):
    status, code, message = 409, "conflict", "A revoked or expired key cannot be rotated."


class CreateKey(Body):
    name: str = Field(min_length=1, max_length=200)
    scopes: tuple[str, ...] = ()
    environment: Literal["live", "test"] = "live"
    expiresAt: KeyExpiry | None = None
    allowedIps: tuple[str, ...] = ()
    rateLimit: RateLimitOverride | None = None  # overrides the plan's per-key limit
    attributes: Attributes = Field(default_factory=dict)

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_scope(s) for s in value)

    @field_validator("allowedIps")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(parse_network(v)) for v in value)


class UpdateKey(Body):
    name: str | None = Field(None, min_length=1, max_length=200)
    rateLimit: RateLimitOverride | None = None  # null removes the override
    attributes: Attributes | None = Field(
        None, description="Replaces all of the key's attributes; {} or null removes them."
    )


class RotateKey(Body):
    grace: Grace = Field(0.0, description="How long the old key keeps working, e.g. 24h.")


class KeysApi:
    """The key endpoints, and the one way a key is minted (the demo key too)."""

    def __init__(
        self,
        store: Store,
        config: GatewayConfig,
        key_format: KeyFormat,
        audit: AuditTrail | None = None,
        *,
        clock: Clock = time.time,
        on_key_event: KeyEventHook | None = None,
    ) -> None:
        self.store = store
        self.config = config  # replaced on a reload: plans and routes
        self.format = key_format
        self.audit = audit
        self.clock = clock
        self._on_key_event = on_key_event

    async def _audit(
        self,
        request: web.Request,
        action: str,
        key: ApiKey,
        *,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> None:
        if self.audit is not None:
            await self.audit.record(
                actor_of(request),
                action,
                target=key.id,
                org_id=key.org_id,
                before=before,
                after=after,
            )

    async def _key_event(self, kind: str, key: ApiKey) -> None:
        if self._on_key_event is not None:
            await self._on_key_event(kind, key)

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/admin/orgs/{org}/keys", self.create_key)
        r.add_get("/admin/orgs/{org}/keys", self.list_keys)
        r.add_get("/admin/keys/{id}", self.get_key)
        r.add_patch("/admin/keys/{id}", self.update_key)
        r.add_post("/admin/keys/{id}/revoke", self.revoke_key)
        r.add_post("/admin/keys/{id}/rotate", self.rotate_key)

    async def _body(self, request: web.Request, model: type[B]) -> B:
        context: dict[str, Any] = {"now": self.clock()}  # expiresAt must lie ahead
        return parse_body(await request.read(), model, context)

    async def _key(self, request: web.Request) -> ApiKey:
        key_id = request.match_info["id"]
        key = await self.store.get_key(key_id)
        if key is None:
            raise NotFound(f"No key {key_id!r}.")
        return key

    def _check_override(self, limit: RateLimitOverride | None) -> None:
        """A per-key limit must let the costliest route through, or its callers wait forever."""
        if limit is None:
            return
        costliest = max((r.cost for r in self.config.routes if r.auth == "key"), default=1)
        if limit.requests + limit.burst < costliest:
            raise BadRequest(
                f"rateLimit: allows {limit.requests + limit.burst} at once, but a route costs"
                f" {costliest}; raise requests or burst"
            )

    async def create_key(self, request: web.Request) -> web.Response:
        org = await find_org(self.store, request.match_info["org"])
        body = await self._body(request, CreateKey)
        self._check_override(body.rateLimit)
        key, secret = self.new_key(
            org,
            name=body.name,
            scopes=body.scopes,
            environment=body.environment,
            expires_at=body.expiresAt.timestamp() if body.expiresAt else None,
            allowed_ips=body.allowedIps,
            rate_limit=body.rateLimit.model_dump() if body.rateLimit else None,
            attributes=dict(body.attributes),
        )
        await self.store.create_key(key)
        await self._key_event("created", key)
        await self._audit(request, "key.create", key, after=key_view(key))
        return json_response(key_view(key, secret), 201)

    def new_key(
        self,
        org: Org,
        *,
        name: str,
        scopes: tuple[str, ...],
        environment: Literal["live", "test"],
        expires_at: float | None,
        allowed_ips: tuple[str, ...],
        rate_limit: dict[str, Any] | None = None,
        attributes: dict[str, str] | None = None,
    ) -> tuple[ApiKey, str]:
        if not self.config.plans[org.plan].api_keys:
            raise ApiAccessDisabled(
                f"The plan {org.plan!r} of org {org.slug!r} includes no API keys."
            )
        secret = self.format.generate(environment)
        parsed = self.format.parse(secret)
        if parsed is None:  # the generator and the parser disagree: a bug, not bad input
            raise RuntimeError("generated key does not parse")
        key = ApiKey(
            id=prefixed_id(self.config.ids.key),
            org_id=org.id,
            name=name,
            scopes=scopes,
            environment=environment,
            prefix=parsed.display_prefix,
            last4=parsed.last4,
            key_hash=self.format.hash(secret),
            created_at=self.clock(),
            expires_at=expires_at,
            allowed_ips=allowed_ips,
            rate_limit=rate_limit,
            attributes=dict(attributes or {}),
        )
        return key, secret

    async def list_keys(self, request: web.Request) -> web.Response:
        org = await find_org(self.store, request.match_info["org"])
        return json_response([key_view(k) for k in await self.store.list_keys(org.id)])

    async def get_key(self, request: web.Request) -> web.Response:
        return json_response(key_view(await self._key(request)))

    async def update_key(self, request: web.Request) -> web.Response:
        key = await self._key(request)
        body = await self._body(request, UpdateKey)
        self._check_override(body.rateLimit)
        changes: dict[str, Any] = {}
        if body.name is not None:
            changes["name"] = body.name
        if "rateLimit" in body.model_fields_set:
            changes["rate_limit"] = body.rateLimit.model_dump() if body.rateLimit else None
        if "attributes" in body.model_fields_set:
            changes["attributes"] = dict(body.attributes or {})
        before = key

        def update(current: ApiKey) -> ApiKey:
            nonlocal before  # the key as it was in the atomic step, for the audit log
            before = current
            return current.with_changes(**changes)

        updated = await self.store.update_key(key.id, update)
        if updated is None:
            raise NotFound(f"No key {key.id!r}.")
        view = key_view(updated)
        await self._audit(request, "key.update", updated, before=key_view(before), after=view)
        return json_response(view)

    async def revoke_key(self, request: web.Request) -> web.Response:
        key = await self._key(request)
        did_revoke = False

        before = key

        def revoke(current: ApiKey) -> ApiKey:
            nonlocal did_revoke, before  # decided on the key as stored, in the atomic step
            did_revoke = current.revoked_at is None
            before = current
            return self._revoke(current)

        revoked = await self.store.update_key(key.id, revoke)
        if revoked is None:
            raise NotFound(f"No key {key.id!r}.")
        view = key_view(revoked)
        if did_revoke:  # announced once, even when two admins revoke at the same moment
            await self._key_event("revoked", revoked)
            await self._audit(request, "key.revoke", revoked, before=key_view(before), after=view)
        return json_response(view)

    def _revoke(self, key: ApiKey) -> ApiKey:
        return key if key.revoked_at is not None else key.with_changes(revoked_at=self.clock())

    async def rotate_key(self, request: web.Request) -> web.Response:
        old = await self._key(request)
        body = await self._body(request, RotateKey)
        now = self.clock()
        if not old.usable_at(now):
            raise KeyNotRotatable()
        org = await self.store.get_org(old.org_id)
        if org is None:
            raise NotFound(f"No org {old.org_id!r}.")
        new, secret = self.new_key(
            org,
            name=old.name,
            scopes=old.scopes,
            environment="test" if old.environment == "test" else "live",
            expires_at=old.expires_at,
            allowed_ips=old.allowed_ips,
            rate_limit=old.rate_limit,
            attributes=old.attributes,
        )
        # The new key exists before the old one is shortened: a failure in between leaves two
        # working keys, never none.
        await self.store.create_key(new)
        grace_end = now + body.grace
        before = old

        def shorten(current: ApiKey) -> ApiKey:
            nonlocal before  # the key as it was in the atomic step, for the audit log
            before = current
            # Checked again on the key as stored now: a revoke that won the race stays.
            if not current.usable_at(now):
                raise KeyNotRotatable()
            expires = (
                grace_end if current.expires_at is None else min(current.expires_at, grace_end)
            )
            return current.with_changes(expires_at=expires, rotated_to=new.id)

        try:
            shortened = await self.store.update_key(old.id, shorten)
        except KeyNotRotatable:
            await self.store.update_key(new.id, self._revoke)  # the replacement must not outlive it
            raise
        except BaseException:
            # The old key could not be shortened (the store failed): the new one works all the
            # same, and is on record.
            await self._audit(request, "key.create", new, after=key_view(new))
            raise
        if shortened is not None:
            await self._key_event("rotated", shortened)
            await self._audit(
                request,
                "key.rotate",
                shortened,
                before=key_view(before),
                after={"old": key_view(shortened), "new": key_view(new)},
            )
        return json_response(key_view(new, secret), 201)
