"""Who is calling: keys resolved to identities through a cache that invalidation keeps honest."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from gateway.forwarded import IPNetwork
from gateway.headers import API_KEY_ID, KEY_ENVIRONMENT, ORG_ID, ORG_SLUG, SCOPES
from gateway.keys import KeyFormat
from gateway.scopes import ScopePolicy
from gateway.store import ApiKey, Invalidation, Org, Store, StoreError
from gateway.tasks import cancel_and_wait

log = structlog.get_logger("gateway.identity")

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller, with everything a request needs computed once per lookup."""

    key: ApiKey
    org: Org
    scopes: frozenset[str]  # implications applied
    networks: tuple[IPNetwork, ...]  # the key's allowed_ips, parsed
    headers: Mapping[str, str]  # what the backend is told about the caller


def _identity(key: ApiKey, org: Org, scopes: frozenset[str]) -> Identity:
    headers = {
        ORG_ID: org.id,
        ORG_SLUG: org.slug,
        API_KEY_ID: key.id,
        SCOPES: " ".join(sorted(scopes)),
        KEY_ENVIRONMENT: key.environment,
    }
    networks = tuple(ipaddress.ip_network(n, strict=False) for n in key.allowed_ips)
    return Identity(key, org, scopes, networks, headers)


@dataclass(slots=True)
class _Entry:
    identity: Identity
    fetched_at: float


class KeyRing:
    """Resolves secrets to identities. A warm key is a dict lookup: no store round trip.

    Entries leave the cache when the store announces a change (revocation, rotation, a plan
    change), and in any case after ``cache_ttl``; while the store's invalidation channel is down,
    after one second. Expiry and rotation grace are checked on every request against the clock.

    When the store cannot be reached, a key that was good when last checked keeps working
    (served stale) and the store is not asked again for a second; an unknown key gets a 503.

    SECURITY: anyone can make well-formed keys (the checksum is public), so unknown hashes live
    in a small cache of their own that cannot push good keys out, and at most
    ``MAX_CONCURRENT_LOOKUPS`` store lookups run at once.
    """

    NEGATIVE_TTL = 5.0
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
        self._store_retry_at = 0.0
        self._pending_use: dict[str, float] = {}
        self._last_written: dict[str, float] = {}
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
        else:
            self._known.clear()
            self._unknown.clear()
            self._by_org.clear()

    def _forget(self, key_hash: str) -> None:
        entry = self._known.pop(key_hash, None)
        if entry is not None:
            hashes = self._by_org.get(entry.identity.org.id)
            if hashes is not None:
                hashes.discard(key_hash)

    def _ttl(self) -> float:
        if getattr(self.store, "invalidation_live", True):
            return self.cache_ttl
        return self.UNTRUSTED_TTL

    async def resolve(self, secret: str) -> Identity | None:
        """The identity of a usable key, or None (malformed, unknown, revoked or expired).

        Raises StoreError when the store is needed and cannot answer: the caller must say
        "unavailable", never "unauthorized", for a key it could not check.
        """
        if self.format.parse(secret) is None:
            return None  # SECURITY: refused offline: garbage never reaches the store
        key_hash = self.format.hash(secret)
        now = self.clock()
        entry = self._known.get(key_hash)
        identity: Identity | None
        if entry is not None:
            self._known.move_to_end(key_hash)
            identity = entry.identity
            if now - entry.fetched_at > self._ttl():
                if now < self._store_retry_at:
                    self.stale_served += 1
                else:
                    try:
                        identity = await self._fetch(key_hash)
                    except StoreError:
                        # Stale if error; expiry and revocation times are still checked below.
                        self._store_retry_at = now + self.OUTAGE_BACKOFF
                        self.stale_served += 1
        else:
            seen = self._unknown.get(key_hash)
            if seen is not None and now - seen <= self.NEGATIVE_TTL:
                return None
            if now < self._store_retry_at:
                raise StoreError("the store is unavailable; not asking again for a moment")
            try:
                identity = await self._fetch(key_hash)
            except StoreError:
                self._store_retry_at = now + self.OUTAGE_BACKOFF
                raise
        if identity is None or not identity.key.usable_at(now):
            return None
        self._mark_used(identity.key.id, now)
        return identity

    async def _fetch(self, key_hash: str) -> Identity | None:
        """One store lookup per hash at a time, shared by every request that needs it.

        The lookup is a task of its own: a caller that is cancelled cancels only its own wait.
        """
        task = self._inflight.get(key_hash)
        if task is None:
            task = asyncio.ensure_future(self._lookup(key_hash))
            self._inflight[key_hash] = task
            task.add_done_callback(lambda _: self._inflight.pop(key_hash, None))
        return await asyncio.shield(task)

    async def _lookup(self, key_hash: str) -> Identity | None:
        generation = self._generation
        async with self._lookups:
            identity = await self._load(key_hash)
        if generation != self._generation:
            return identity  # a change was announced meanwhile: answer this once, keep nothing
        now = self.clock()
        if identity is None:
            self._forget(key_hash)
            self._unknown[key_hash] = now
            self._unknown.move_to_end(key_hash)
            if len(self._unknown) > self.MAX_UNKNOWN:
                self._unknown.popitem(last=False)
        else:
            self._known[key_hash] = _Entry(identity, now)
            self._known.move_to_end(key_hash)
            self._by_org.setdefault(identity.org.id, set()).add(key_hash)
            if len(self._known) > self.MAX_KNOWN:
                evicted_hash, evicted = self._known.popitem(last=False)
                self._by_org.get(evicted.identity.org.id, set()).discard(evicted_hash)
        return identity

    async def _load(self, key_hash: str) -> Identity | None:
        key = await self.store.find_key(key_hash)
        if key is None:
            return None
        org = await self.store.get_org(key.org_id)
        if org is None:
            return None
        return _identity(key, org, self.scopes.expand(key.scopes))

    def _mark_used(self, key_id: str, now: float) -> None:
        # At most one write per key per interval, and never on the request path.
        if now - self._last_written.get(key_id, 0.0) >= self.last_used_interval:
            self._last_written[key_id] = now
            self._pending_use[key_id] = now

    async def flush_last_used(self) -> None:
        if not self._pending_use:
            return
        batch, self._pending_use = self._pending_use, {}
        try:
            await self.store.touch_keys(batch)
        except StoreError as exc:
            log.warning("last_used_not_saved", keys=len(batch), error=str(exc))
            for key_id, at in batch.items():  # try again with the next flush
                self._pending_use.setdefault(key_id, at)

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.last_used_interval))
            await self.flush_last_used()
