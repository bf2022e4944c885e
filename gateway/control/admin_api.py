"""Admin API for orgs and keys: JSON in, JSON out, the data/error envelopes."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import orjson
import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from gateway.config.models import GatewayConfig
from gateway.config.types import parse_network
from gateway.config.validation import describe_errors
from gateway.control.bounds import Grace, KeyExpiry, RateLimitOverride
from gateway.control.listener import json_response
from gateway.errors import ApiAccessDisabled, BadRequest, GatewayError
from gateway.keys.scopes import check_scope
from gateway.keys.secrets import KeyFormat
from gateway.store import ApiKey, Org, Store, new_id

log = structlog.get_logger("gateway.admin")

Clock = Callable[[], float]
# Called after a key is created, revoked or rotated (key.created, ...), for webhooks.
KeyEventHook = Callable[[str, ApiKey], Awaitable[None]]
_SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")  # fullmatch: "acme\n" is no slug


class NotFound(GatewayError):
    status, code = 404, "not_found"


class KeyNotRotatable(GatewayError):
    status, code, message = 409, "conflict", "A revoked or expired key cannot be rotated."


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


B = TypeVar("B", bound=Body)


def parse_body(raw: bytes, model: type[B], context: dict[str, Any]) -> B:
    """A JSON object body as model, or 400 naming every problem with its field."""
    try:
        payload = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise BadRequest("The body must be JSON.") from None
    if not isinstance(payload, dict):
        raise BadRequest("The body must be a JSON object.")
    try:
        return model.model_validate(payload, context=context)
    except ValidationError as exc:
        raise BadRequest("; ".join(describe_errors(exc, model))) from None


def _plan_known(value: str, info: ValidationInfo) -> str:
    plans = (info.context or {}).get("plans", ())
    if value not in plans:
        raise ValueError(f"unknown plan {value!r} (known: {', '.join(plans)})")
    return value


class CreateOrg(Body):
    slug: str = Field(description="Lower-case letters, digits and '-'; used in URLs.")
    name: str = Field(min_length=1, max_length=200)
    plan: str

    @field_validator("slug")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _SLUG.fullmatch(value) or value.startswith("org_"):
            raise ValueError(
                f"must be 1-63 lower-case letters, digits or '-', not at the ends (got {value!r})"
            )
        return value

    _plan = field_validator("plan")(_plan_known)


class UpdateOrg(Body):
    name: str | None = Field(None, min_length=1, max_length=200)
    plan: str | None = None

    @field_validator("plan")
    @classmethod
    def _plan(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _plan_known(value, info)


class CreateKey(Body):
    name: str = Field(min_length=1, max_length=200)
    scopes: tuple[str, ...] = ()
    environment: Literal["live", "test"] = "live"
    expiresAt: KeyExpiry | None = None
    allowedIps: tuple[str, ...] = ()
    rateLimit: RateLimitOverride | None = None  # overrides the plan's per-key limit

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


class RotateKey(Body):
    grace: Grace = Field(0.0, description="How long the old key keeps working, e.g. 24h.")


async def find_org(store: Store, ref: str) -> Org:
    """The org with this id or slug, or 404."""
    org = await store.get_org(ref)
    if org is None:
        raise NotFound(f"No org {ref!r}.")
    return org


_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)


def iso(ts: float | None) -> str | None:
    """RFC 3339 in UTC, to the millisecond. Never raises: an endpoint must not go down over one
    odd stored time (older versions could store a key expiry in the year 273792727), so a time
    beyond what a datetime can hold is clamped to year 1 or 9999, and a non-number is null."""
    if ts is None:
        return None
    try:
        moment = datetime.fromtimestamp(ts, UTC)
    except (OverflowError, OSError, ValueError, TypeError):
        valid = isinstance(ts, int | float) and not math.isnan(ts)
        log.warning(
            "stored_time_out_of_range", value=repr(ts), shown="clamped" if valid else "null"
        )
        if not valid:
            return None
        moment = _LATEST if ts > 0 else _EARLIEST
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def org_view(org: Org) -> dict[str, Any]:
    return {
        "id": org.id,
        "slug": org.slug,
        "name": org.name,
        "plan": org.plan,
        "createdAt": iso(org.created_at),
    }


def key_view(key: ApiKey, secret: str | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {"id": key.id}
    if secret is not None:
        view["secret"] = secret  # SECURITY: only in the answer to create and rotate
    view.update(
        {
            "name": key.name,
            "scopes": list(key.scopes),
            "environment": key.environment,
            "orgId": key.org_id,
            "prefix": key.prefix,
            "last4": key.last4,
            "allowedIps": list(key.allowed_ips),
            "createdAt": iso(key.created_at),
            "expiresAt": iso(key.expires_at),
            "lastUsedAt": iso(key.last_used_at),
            "revokedAt": iso(key.revoked_at),
            "rotatedTo": key.rotated_to,
            "rateLimit": key.rate_limit,
        }
    )
    return view


class AdminApi:
    """The org and key endpoints; the admin app's middleware handles auth and errors."""

    def __init__(
        self,
        store: Store,
        config: GatewayConfig,
        key_format: KeyFormat,
        *,
        clock: Clock = time.time,
        on_key_event: KeyEventHook | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.format = key_format
        self.clock = clock
        self._on_key_event = on_key_event

    async def _key_event(self, kind: str, key: ApiKey) -> None:
        if self._on_key_event is not None:
            await self._on_key_event(kind, key)

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/admin/orgs", self.create_org)
        r.add_get("/admin/orgs", self.list_orgs)
        r.add_get("/admin/orgs/{org}", self.get_org)
        r.add_patch("/admin/orgs/{org}", self.update_org)
        r.add_post("/admin/orgs/{org}/keys", self.create_key)
        r.add_get("/admin/orgs/{org}/keys", self.list_keys)
        r.add_get("/admin/keys/{id}", self.get_key)
        r.add_patch("/admin/keys/{id}", self.update_key)
        r.add_post("/admin/keys/{id}/revoke", self.revoke_key)
        r.add_post("/admin/keys/{id}/rotate", self.rotate_key)

    async def _body(self, request: web.Request, model: type[Body]) -> Any:
        context = {"plans": list(self.config.plans), "now": self.clock()}
        return parse_body(await request.read(), model, context)

    async def _org(self, request: web.Request) -> Org:
        return await find_org(self.store, request.match_info["org"])

    async def _key(self, request: web.Request) -> ApiKey:
        key_id = request.match_info["id"]
        key = await self.store.get_key(key_id)
        if key is None:
            raise NotFound(f"No key {key_id!r}.")
        return key

    async def create_org(self, request: web.Request) -> web.Response:
        body: CreateOrg = await self._body(request, CreateOrg)
        org = Org(new_id("org"), body.slug, body.name, body.plan, self.clock())
        await self.store.create_org(org)
        return json_response(org_view(org), 201)

    async def list_orgs(self, request: web.Request) -> web.Response:
        return json_response([org_view(o) for o in await self.store.list_orgs()])

    async def get_org(self, request: web.Request) -> web.Response:
        return json_response(org_view(await self._org(request)))

    async def update_org(self, request: web.Request) -> web.Response:
        org = await self._org(request)
        body: UpdateOrg = await self._body(request, UpdateOrg)

        def change(current: Org) -> Org:
            return Org(
                current.id,
                current.slug,
                body.name or current.name,
                body.plan or current.plan,
                current.created_at,
            )

        changed = await self.store.update_org(org.id, change)
        if changed is None:
            raise NotFound(f"No org {org.id!r}.")
        return json_response(org_view(changed))

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
        org = await self._org(request)
        body: CreateKey = await self._body(request, CreateKey)
        self._check_override(body.rateLimit)
        key, secret = self.new_key(
            org,
            name=body.name,
            scopes=body.scopes,
            environment=body.environment,
            expires_at=body.expiresAt.timestamp() if body.expiresAt else None,
            allowed_ips=body.allowedIps,
            rate_limit=body.rateLimit.model_dump() if body.rateLimit else None,
        )
        await self.store.create_key(key)
        await self._key_event("created", key)
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
            id=new_id("key"),
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
        )
        return key, secret

    async def list_keys(self, request: web.Request) -> web.Response:
        org = await self._org(request)
        return json_response([key_view(k) for k in await self.store.list_keys(org.id)])

    async def get_key(self, request: web.Request) -> web.Response:
        return json_response(key_view(await self._key(request)))

    async def update_key(self, request: web.Request) -> web.Response:
        key = await self._key(request)
        body: UpdateKey = await self._body(request, UpdateKey)
        self._check_override(body.rateLimit)
        changes: dict[str, Any] = {}
        if body.name is not None:
            changes["name"] = body.name
        if "rateLimit" in body.model_fields_set:
            changes["rate_limit"] = body.rateLimit.model_dump() if body.rateLimit else None
        updated = await self.store.update_key(key.id, lambda k: k.with_changes(**changes))
        if updated is None:
            raise NotFound(f"No key {key.id!r}.")
        return json_response(key_view(updated))

    async def revoke_key(self, request: web.Request) -> web.Response:
        key = await self._key(request)
        did_revoke = False

        def revoke(current: ApiKey) -> ApiKey:
            nonlocal did_revoke  # decided on the key as stored, in the atomic step
            did_revoke = current.revoked_at is None
            return self._revoke(current)

        revoked = await self.store.update_key(key.id, revoke)
        if revoked is None:
            raise NotFound(f"No key {key.id!r}.")
        if did_revoke:  # announced once, even when two admins revoke at the same moment
            await self._key_event("revoked", revoked)
        return json_response(key_view(revoked))

    def _revoke(self, key: ApiKey) -> ApiKey:
        return key if key.revoked_at is not None else key.with_changes(revoked_at=self.clock())

    async def rotate_key(self, request: web.Request) -> web.Response:
        old = await self._key(request)
        body: RotateKey = await self._body(request, RotateKey)
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
        )
        # The new key exists before the old one is shortened: a failure in between leaves two
        # working keys, never none.
        await self.store.create_key(new)
        grace_end = now + body.grace

        def shorten(current: ApiKey) -> ApiKey:
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
        if shortened is not None:
            await self._key_event("rotated", shortened)
        return json_response(key_view(new, secret), 201)
