"""API keys as operations: create, change, revoke and rotate, shared by the admin API and the
self-service endpoint keys use on the data plane.

Every check that keeps a key sound lives here once: the plan's api_keys and key_ttl, a per-key
limit the costliest route still fits, rotation racing a revoke, and the audit record and key
event of each change. The caller says who acts: an admin token's name, or ``key:<id>``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

from pydantic import Field, field_validator

from gateway.api.attributes import Attributes
from gateway.api.audit import AuditTrail
from gateway.api.bodies import Body
from gateway.api.bounds import Grace, KeyExpiry, RateLimitOverride
from gateway.api.views import NotFound, key_view
from gateway.config import GatewayConfig
from gateway.config.types import check_scope, format_duration, parse_network
from gateway.errors import ApiAccessDisabled, BadRequest, GatewayError
from gateway.store import ApiKey, Org, Store, prefixed_id

Clock = Callable[[], float]
# Called after a key is created, revoked or rotated (key.created, ...), for webhooks.
KeyEventHook = Callable[[str, ApiKey], Awaitable[None]]


class ShownParts(Protocol):
    @property
    def display_prefix(self) -> str: ...

    @property
    def last4(self) -> str: ...


class KeyMinter(Protocol):
    """How secrets are made, checked and hashed (gateway.keys.secrets.KeyFormat)."""

    def generate(self, environment: Literal["live", "test"] = "live") -> str: ...

    def parse(self, secret: str) -> ShownParts | None: ...

    def hash(self, secret: str) -> str: ...


class KeyNotRotatable(GatewayError):
    status, code, message = 409, "conflict", "A revoked or expired key cannot be rotated."


class KeyRotatedAlready(KeyNotRotatable):
    message = "This key was rotated already; rotate the key that replaced it (rotatedTo)."


class KeyChangedMeanwhile(KeyNotRotatable):
    message = "This key was changed while it was being rotated; rotate it again."


def standing(key: ApiKey) -> tuple[object, ...]:
    """What a key acts with: scopes, environment, networks, role and limit (not its expiry)."""
    attributes = sorted(key.attributes.items())
    limit = sorted((key.rate_limit or {}).items())
    return (key.scopes, key.environment, key.allowed_ips, attributes, limit)


# A key's scopes go to the backend in one header, its networks are checked on every request.
MAX_SCOPES = 100
MAX_NETWORKS = 100


def _scope_names(value: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(check_scope(s) for s in value)


def _networks(value: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(str(parse_network(v)) for v in value)


class CreateKey(Body):
    name: str = Field(min_length=1, max_length=200)
    scopes: tuple[str, ...] = Field((), max_length=MAX_SCOPES)
    environment: Literal["live", "test"] = "live"
    expiresAt: KeyExpiry | None = None
    allowedIps: tuple[str, ...] = Field((), max_length=MAX_NETWORKS)
    rateLimit: RateLimitOverride | None = None  # overrides the plan's per-key limit
    attributes: Attributes = Field(default_factory=dict)

    _scopes = field_validator("scopes")(_scope_names)
    _cidrs = field_validator("allowedIps")(_networks)


class OwnCreateKey(Body):
    """What a key may ask for at the self-service endpoint: limits and attributes are an
    admin's (a new key carries its maker's attributes)."""

    name: str = Field(min_length=1, max_length=200)
    scopes: tuple[str, ...] = Field((), max_length=MAX_SCOPES)
    environment: Literal["live", "test"] = "live"
    expiresAt: KeyExpiry | None = None
    allowedIps: tuple[str, ...] = Field((), max_length=MAX_NETWORKS)

    _scopes = field_validator("scopes")(_scope_names)
    _cidrs = field_validator("allowedIps")(_networks)

    def as_create(self, attributes: dict[str, str], rate_limit: dict[str, Any] | None) -> CreateKey:
        """The admin API's body for it, with the maker's attributes and own limit: a key makes
        keys that act in its role and under its throttle, never above them."""
        # Validated already (expiresAt against the clock of this request): taken as it is.
        fields = {name: getattr(self, name) for name in type(self).model_fields}
        limit = None if rate_limit is None else RateLimitOverride.model_validate(rate_limit)
        return CreateKey.model_construct(**fields, rateLimit=limit, attributes=attributes)


class OwnUpdateKey(Body):
    name: str = Field(min_length=1, max_length=200)


class UpdateKey(Body):
    name: str | None = Field(None, min_length=1, max_length=200)
    rateLimit: RateLimitOverride | None = None  # null removes the override
    attributes: Attributes | None = Field(
        None, description="Replaces all of the key's attributes; {} or null removes them."
    )


class RotateKey(Body):
    grace: Grace = Field(0.0, description="How long the old key keeps working, e.g. 24h.")


class KeyService:
    """The key operations; ``config`` is replaced on a reload (plans and routes)."""

    def __init__(
        self,
        store: Store,
        config: GatewayConfig,
        key_format: KeyMinter,
        audit: AuditTrail | None = None,
        *,
        clock: Clock = time.time,
        on_key_event: KeyEventHook | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.format = key_format
        self.audit = audit
        self.clock = clock
        self._on_key_event = on_key_event

    async def _audit(
        self,
        actor: str,
        action: str,
        key: ApiKey,
        *,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> None:
        if self.audit is not None:
            await self.audit.record(
                actor, action, target=key.id, org_id=key.org_id, before=before, after=after
            )

    async def _key_event(self, kind: str, key: ApiKey) -> None:
        if self._on_key_event is not None:
            await self._on_key_event(kind, key)

    async def key(self, key_id: str, org_id: str | None = None) -> ApiKey:
        """The key, or 404; with ``org_id``, another org's key is just as absent."""
        key = await self.store.get_key(key_id)
        if key is None or (org_id is not None and key.org_id != org_id):
            raise NotFound(f"No key {key_id!r}.")
        return key

    def check_override(self, limit: RateLimitOverride | None) -> None:
        """A per-key limit must let the costliest route through, or its callers wait forever."""
        if limit is None:
            return
        costliest = max((r.cost for r in self.config.routes if "key" in r.credentials), default=1)
        if limit.requests + limit.burst < costliest:
            raise BadRequest(
                f"rateLimit: allows {limit.requests + limit.burst} at once, but a route costs"
                f" {costliest}; raise requests or burst"
            )

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
        """A new key and its secret (not stored yet): the one way a key is minted.

        Without ``expires_at`` the key lives its plan's ``key_ttl``; a later expiry than that
        is refused, so a plan's promise of keys that expire holds for every key.
        """
        plan = self.config.plans.get(org.plan)
        if plan is None:  # a reload removed it: the org has no plan to make keys under
            raise ApiAccessDisabled(
                f"The plan {org.plan!r} of org {org.slug!r} is not in the config; move the org"
                " to another plan."
            )
        if not plan.api_keys:
            raise ApiAccessDisabled(
                f"The plan {org.plan!r} of org {org.slug!r} includes no API keys."
            )
        now = self.clock()
        if plan.key_ttl is not None:
            latest = now + plan.key_ttl
            if expires_at is None:
                expires_at = latest
            elif expires_at > latest:
                raise BadRequest(
                    f"expiresAt: keys on plan {org.plan!r} live at most"
                    f" {format_duration(plan.key_ttl)}; give an earlier time or none"
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
            created_at=now,
            expires_at=expires_at,
            allowed_ips=allowed_ips,
            rate_limit=rate_limit,
            attributes=dict(attributes or {}),
        )
        return key, secret

    async def create(
        self, actor: str, org: Org, body: CreateKey, *, expires_by: float | None = None
    ) -> tuple[ApiKey, str]:
        """A new key; it expires by ``expires_by`` at the latest (see rotate)."""
        self.check_override(body.rateLimit)
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
        key = _expiring_by(key, expires_by)
        await self.store.create_key(key)
        await self._key_event("created", key)
        await self._audit(actor, "key.create", key, after=key_view(key))
        return key, secret

    async def update(self, actor: str, key: ApiKey, body: UpdateKey) -> ApiKey:
        self.check_override(body.rateLimit)
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
        await self._audit(actor, "key.update", updated, before=key_view(before), after=view)
        return updated

    async def revoke(self, actor: str, key: ApiKey) -> ApiKey:
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
        if did_revoke:  # announced once, even when two admins revoke at the same moment
            await self._key_event("revoked", revoked)
            await self._audit(
                actor, "key.revoke", revoked, before=key_view(before), after=key_view(revoked)
            )
        return revoked

    def _revoke(self, key: ApiKey) -> ApiKey:
        return key if key.revoked_at is not None else key.with_changes(revoked_at=self.clock())

    async def rotate(
        self, actor: str, old: ApiKey, grace: float, *, expires_by: float | None = None
    ) -> tuple[ApiKey, str]:
        """A new key like the old one, which keeps working for ``grace`` seconds.

        On a plan with ``key_ttl`` the new key lives a fresh lifetime (rotating is how a key
        that expires by default is renewed); otherwise it keeps the old key's expiry. Either
        way it expires by ``expires_by`` at the latest (a key renewing keys: never beyond its
        own expiry).
        """
        now = self.clock()
        if not old.usable_at(now):
            raise KeyNotRotatable()
        if old.rotated_to is not None:
            raise KeyRotatedAlready()
        org = await self.store.get_org(old.org_id)
        if org is None:
            raise NotFound(f"No org {old.org_id!r}.")
        plan = self.config.plans.get(org.plan)
        renews = plan is not None and plan.key_ttl is not None
        new, secret = self.new_key(
            org,
            name=old.name,
            scopes=old.scopes,
            environment="test" if old.environment == "test" else "live",
            expires_at=None if renews else old.expires_at,
            allowed_ips=old.allowed_ips,
            rate_limit=old.rate_limit,
            attributes=old.attributes,
        )
        new = _expiring_by(new, expires_by)
        # The new key exists before the old one is shortened: a failure in between leaves two
        # working keys, never none.
        await self.store.create_key(new)
        grace_end = now + grace
        before = old

        def shorten(current: ApiKey) -> ApiKey:
            nonlocal before  # the key as it was in the atomic step, for the audit log
            before = current
            # Checked again on the key as stored now: a revoke that won the race stays, and of
            # two rotations at once one wins: a key has one replacement, never several.
            if not current.usable_at(now):
                raise KeyNotRotatable()
            if current.rotated_to is not None:
                raise KeyRotatedAlready()
            # The new key was made from the key as read before: a change made since (a role
            # taken away, a limit set) must not be undone by its replacement.
            if standing(current) != standing(old):
                raise KeyChangedMeanwhile()
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
            await self._audit(actor, "key.create", new, after=key_view(new))
            raise
        if shortened is not None:
            await self._key_event("rotated", shortened)
            await self._audit(
                actor,
                "key.rotate",
                shortened,
                before=key_view(before),
                after={"old": key_view(shortened), "new": key_view(new)},
            )
        return new, secret


def _expiring_by(key: ApiKey, latest: float | None) -> ApiKey:
    if latest is None or (key.expires_at is not None and key.expires_at <= latest):
        return key
    return key.with_changes(expires_at=latest)
