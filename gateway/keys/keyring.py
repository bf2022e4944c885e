"""Who is calling: keys resolved to identities through a cache that invalidation keeps honest."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import structlog

from gateway.breaker import CircuitBreaker
from gateway.http.forwarded import IPNetwork
from gateway.http.headers import (
    API_KEY_ID,
    CLIENT_ID,
    KEY_ENVIRONMENT,
    ORG_ID,
    ORG_SLUG,
    SCOPES,
    SUBJECT,
)
from gateway.keys.scopes import ScopePolicy
from gateway.keys.secrets import KeyFormat
from gateway.store import ApiKey, Invalidation, Org, Store, StoreError
from gateway.tasks import cancel_and_wait, shared_lookup

log = structlog.get_logger("gateway.identity")

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class TokenBearer:
    """What an access token says of its bearer, beyond its org and scopes."""

    kind: Literal["jwt", "introspection"]  # how it was checked
    subject: str | None
    client_id: str | None
    scopes: tuple[str, ...]  # as the token carries them
    expires_at: float


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller (an API key, or an access token), with everything a request
    needs computed once per lookup."""

    org: Org
    scopes: frozenset[str]  # implications applied
    networks: tuple[IPNetwork, ...]  # the key's allowed_ips, parsed (a token has none)
    headers: Mapping[str, str]  # what the backend is told about the caller
    # The org's attributes, overridden name by name by the key's own: a key inherits the org's.
    attributes: Mapping[str, str]
    # Whose limits apply below the org's: a key's id, or a token's client (else subject).
    caller: str
    actor: str  # who did it, in the audit log: key:<id>, oauth:<client or subject>
    environment: str  # live or test (a token: live)
    rate_limit: Mapping[str, Any] | None  # the key's own limit, if it has one
    key: ApiKey | None = None  # exactly one of key and token
    token: TokenBearer | None = None


def _identity(key: ApiKey, org: Org, scopes: frozenset[str]) -> Identity:
    headers = {
        ORG_ID: org.id,
        ORG_SLUG: org.slug,
        API_KEY_ID: key.id,
        SCOPES: " ".join(sorted(scopes)),
        KEY_ENVIRONMENT: key.environment,
    }
    networks = tuple(ipaddress.ip_network(n, strict=False) for n in key.allowed_ips)
    attributes = {**org.attributes, **key.attributes}
    return Identity(
        org,
        scopes,
        networks,
        headers,
        attributes,
        caller=key.id,
        actor=f"key:{key.id}",
        environment=key.environment,
        rate_limit=key.rate_limit,
        key=key,
    )


def token_identity(bearer: TokenBearer, org: Org, scopes: frozenset[str]) -> Identity:
    """A token's caller: its org's, with the token's scopes, subject and client."""
    headers = {ORG_ID: org.id, ORG_SLUG: org.slug, SCOPES: " ".join(sorted(scopes))}
    if bearer.subject is not None:
        headers[SUBJECT] = bearer.subject
    if bearer.client_id is not None:
        headers[CLIENT_ID] = bearer.client_id
    who = bearer.client_id if bearer.client_id is not None else bearer.subject
    # A client id is the authorization server's string: hashed into the limit's key, so that
    # any text (braces, colons) is a safe part of a Redis key.
    digest = hashlib.sha256((who or "").encode()).hexdigest()[:24]
    return Identity(
        org,
        scopes,
        (),
        headers,
        dict(org.attributes),
        caller=f"oauth:{digest}",
        actor=f"oauth:{who}" if who is not None else "oauth",
        environment="live",
        rate_limit=None,
        token=bearer,
    )


@dataclass(slots=True)
class _Entry:
    identity: Identity
    fetched_at: float
    used_at: float


class KeyRing:
    """Resolves secrets to identities. A warm key is a dict lookup: no store round trip.

    Entries leave the cache when the store announces a change (revocation, rotation, a plan
    change), and in any case after ``cache_ttl``; while the store's invalidation channel is down,
    after one second. Expiry and rotation grace are checked on every request against the clock.
    A key that cannot be used any more (revoked, expired) is remembered like an unknown one,
    briefly, and a key nobody used for ``IDLE_TTL`` (or ``cache_ttl`` if longer) is dropped: under
    key churn the cache holds the keys in use, not every key ever seen.

    When the store cannot be reached, a key that was good when last checked keeps working
    (served stale) and the store is left alone for a second from the failure, then lookups try
    it again (gateway.breaker); an unknown key gets a 503 meanwhile.

    SECURITY: anyone can make well-formed keys (the checksum is public), so unknown hashes live
    in a small cache of their own that cannot push good keys out, and at most
    ``MAX_CONCURRENT_LOOKUPS`` store lookups run at once.
    """

    NEGATIVE_TTL = 5.0
    IDLE_TTL = 600.0  # a key unused this long is dropped (so not served stale in an outage)
    UNTRUSTED_TTL = 1.0  # while invalidations may be missed
    OUTAGE_BACKOFF = 1.0
    MAX_KNOWN = 100_000
    MAX_UNKNOWN = 10_000
    MAX_CONCURRENT_LOOKUPS = 32

    def __init__(
        self,
        store: Store,
        key_format: KeyFormat,
        scopes: ScopePolicy,
        *,
        cache_ttl: float,
        last_used_interval: float,
        clock: Clock = time.time,
    ) -> None:
        self.store = store
        self.format = key_format
        self.scopes = scopes
        self.cache_ttl = cache_ttl
        self.last_used_interval = last_used_interval
        self.clock = clock
        self._known: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._unknown: OrderedDict[str, float] = OrderedDict()  # hash -> when it was looked up
        self._by_org: dict[str, set[str]] = {}
        # Bumped by every invalidation: a lookup that overlapped one is not cached.
        self._generation = 0
        self._inflight: dict[str, asyncio.Task[Identity | None]] = {}
        self._lookups = asyncio.Semaphore(self.MAX_CONCURRENT_LOOKUPS)
        self._breaker = CircuitBreaker(self.OUTAGE_BACKOFF, clock=clock)
        self._pending_use: dict[str, tuple[str, float]] = {}  # key id -> (org id, time)
        # Orgs named by access tokens (by id or slug) -> (the org or None, when fetched).
        self._orgs: OrderedDict[str, tuple[Org | None, float]] = OrderedDict()
        self._org_lookups: dict[str, asyncio.Task[Org | None]] = {}
        self._last_written: OrderedDict[str, float] = OrderedDict()  # key id -> when, oldest first
        self._flusher: asyncio.Task[None] | None = None
        self.stale_served = 0
        store.subscribe(self._invalidate)

    async def startup(self) -> None:
        self._flusher = asyncio.create_task(self._flush_periodically(), name="gateway-last-used")

    async def shutdown(self) -> None:
        await cancel_and_wait(self._flusher)
        self._flusher = None
        await self.flush_last_used()

    def _invalidate(self, message: Invalidation) -> None:
        self._generation += 1
        if message.kind == "key":
            self._unknown.pop(message.ref, None)
            self._forget(message.ref)
        elif message.kind == "org":
            for key_hash in self._by_org.pop(message.ref, set()):
                self._known.pop(key_hash, None)
            # By id or by slug (a rename moves the slug): org changes are rare, start over.
            self._orgs.clear()
        else:
            self._orgs.clear()
            self._known.clear()
            self._unknown.clear()
            self._by_org.clear()

    def _forget(self, key_hash: str) -> None:
        entry = self._known.pop(key_hash, None)
        if entry is not None:
            self._unindex(entry.identity.org.id, key_hash)

    def _unindex(self, org_id: str, key_hash: str) -> None:
        hashes = self._by_org.get(org_id)
        if hashes is not None:
            hashes.discard(key_hash)
            if not hashes:
                del self._by_org[org_id]

    def sizes(self) -> dict[str, int]:
        """How many entries each of the ring's maps holds now (all bounded, most by time)."""
        return {
            "known": len(self._known),
            "unknown": len(self._unknown),
            "orgs": len(self._by_org),
            "inflight": len(self._inflight),
            "pending_use": len(self._pending_use),
            "last_written": len(self._last_written),
            "orgs_by_ref": len(self._orgs),
        }

    def _ttl(self) -> float:
        if self.store.invalidation_live is False:
            return self.UNTRUSTED_TTL
        return self.cache_ttl

    async def resolve(self, secret: str) -> Identity | None:
        """The identity of a usable key, or None (malformed, unknown, revoked or expired).

        Raises StoreError when the store is needed and cannot answer: the caller must say
        "unavailable", never "unauthorized", for a key it could not check.
        """
        if not secret.isascii():
            return None  # no key of ours holds any other character (and ASCII is what we hash)
        key_hash = self.format.hash(secret)
        now = self.clock()
        # A known hash is a secret that passed the shape and checksum check when it was first
        # looked up; the check (a CRC in base62) costs more than the hash, so it runs once.
        entry = self._known.get(key_hash)
        identity: Identity | None
        if entry is None and self.format.parse(secret) is None:
            return None  # SECURITY: refused offline: garbage never reaches the store
        if entry is not None:
            self._known.move_to_end(key_hash)
            entry.used_at = now
            identity = entry.identity
            if now - entry.fetched_at > self._ttl():
                if not self._breaker.allow():
                    self.stale_served += 1
                else:
                    try:
                        identity = await self._fetch(key_hash)
                    except StoreError:
                        # Stale if error; expiry and revocation times are still checked below.
                        self._breaker.failure()
                        self.stale_served += 1
                    else:
                        self._breaker.success()
        else:
            seen = self._unknown.get(key_hash)
            if seen is not None and now - seen <= self.NEGATIVE_TTL:
                return None
            if not self._breaker.allow():
                raise StoreError("the store is unavailable; not asking again for a moment")
            try:
                identity = await self._fetch(key_hash)
            except StoreError:
                self._breaker.failure()
                raise
            self._breaker.success()
        key = None if identity is None else identity.key
        if identity is None or key is None or not key.usable_at(now):
            return None
        self._mark_used(key.id, identity.org.id, now)
        return identity

    async def org(self, ref: str) -> Org | None:
        """The org an access token names (by id or slug), cached like keys: dropped when the
        store announces a change to any org, and after ``cache_ttl``; an unknown one is
        remembered for NEGATIVE_TTL. In an outage a cached org is served stale; an org never
        seen raises StoreError (503, never 401).
        """
        now = self.clock()
        cached = self._orgs.get(ref)
        if cached is not None:
            org, fetched_at = cached
            ttl = self._ttl() if org is not None else min(self._ttl(), self.NEGATIVE_TTL)
            if now - fetched_at <= ttl:
                return org
            if not self._breaker.allow():
                self.stale_served += 1
                return org
        elif not self._breaker.allow():
            raise StoreError("the store is unavailable; not asking again for a moment")
        task = shared_lookup(self._org_lookups, ref, partial(self._lookup_org, ref))
        try:
            org = await asyncio.shield(task)
        except StoreError:
            self._breaker.failure()
            if cached is None:
                raise
            self.stale_served += 1
            return cached[0]
        self._breaker.success()
        return org

    def org_is_fresh(self, ref: str, org: Org, now: float) -> bool:
        """Whether ``org`` is still what ``org(ref)`` answers from cache, without asking."""
        cached = self._orgs.get(ref)
        return cached is not None and cached[0] is org and now - cached[1] <= self._ttl()

    async def _lookup_org(self, ref: str) -> Org | None:
        generation = self._generation
        async with self._lookups:
            org = await self.store.get_org(ref)
        if generation == self._generation:  # else a change was announced meanwhile: keep none
            orgs = self._orgs
            orgs[ref] = (org, self.clock())
            orgs.move_to_end(ref)
            while len(orgs) > self.MAX_UNKNOWN:
                orgs.popitem(last=False)
        return org

    async def _fetch(self, key_hash: str) -> Identity | None:
        """One store lookup per hash at a time, shared by every request that needs it.

        The lookup is a task of its own: a caller that is cancelled cancels only its own wait.
        """
        task = shared_lookup(self._inflight, key_hash, partial(self._lookup, key_hash))
        return await asyncio.shield(task)

    async def _lookup(self, key_hash: str) -> Identity | None:
        generation = self._generation
        async with self._lookups:
            identity = await self._load(key_hash)
        if generation != self._generation:
            return identity  # a change was announced meanwhile: answer this once, keep nothing
        now = self.clock()
        if identity is None or identity.key is None or not identity.key.usable_at(now):
            # Revoked and expired keys stay so (a change to one is announced): like unknown ones,
            # they are remembered briefly, not kept among the good keys until pushed out.
            self._forget(key_hash)
            self._unknown[key_hash] = now
            self._unknown.move_to_end(key_hash)
            self._drop_old_unknown(now)
        else:
            self._known[key_hash] = _Entry(identity, now, now)
            self._known.move_to_end(key_hash)
            self._by_org.setdefault(identity.org.id, set()).add(key_hash)
            self._drop_idle_known(now)
        return identity

    def _drop_old_unknown(self, now: float) -> None:
        # Oldest first, so this stops at the first entry still worth keeping.
        unknown = self._unknown
        while unknown and (
            len(unknown) > self.MAX_UNKNOWN
            or now - next(iter(unknown.values())) > self.NEGATIVE_TTL
        ):
            unknown.popitem(last=False)

    def _drop_idle_known(self, now: float) -> None:
        # Least recently used first: every entry behind the first one kept was used later.
        idle = max(self.cache_ttl, self.IDLE_TTL)
        known = self._known
        while known:
            key_hash, entry = next(iter(known.items()))
            if len(known) <= self.MAX_KNOWN and now - entry.used_at <= idle:
                break
            del known[key_hash]
            self._unindex(entry.identity.org.id, key_hash)

    async def _load(self, key_hash: str) -> Identity | None:
        key = await self.store.find_key(key_hash)
        if key is None:
            return None
        org = await self.store.get_org(key.org_id)
        if org is None:
            return None
        return _identity(key, org, self.scopes.expand(key.scopes))

    def _mark_used(self, key_id: str, org_id: str, now: float) -> None:
        # At most one write per key per interval, and never on the request path.
        interval = self.last_used_interval
        written = self._last_written
        if now - written.get(key_id, 0.0) >= interval:
            written[key_id] = now
            written.move_to_end(key_id)
            self._pending_use[key_id] = (org_id, now)
            # A mark older than the interval allows the next write like no mark at all: drop
            # those (oldest first), so this map holds the keys used within one interval.
            while now - next(iter(written.values())) >= interval:
                written.popitem(last=False)

    async def flush_last_used(self) -> None:
        if not self._pending_use:
            return
        batch, self._pending_use = self._pending_use, {}
        try:
            await self.store.touch_keys(batch)
        except StoreError as exc:
            log.warning("last_used_not_saved", keys=len(batch), error=str(exc))
            for key_id, use in batch.items():  # try again with the next flush
                self._pending_use.setdefault(key_id, use)

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.last_used_interval))
            await self.flush_last_used()
