"""Who is calling: keys resolved to identities through a cache that invalidation keeps honest."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from gateway.forwarded import IPNetwork
from gateway.keys import KeyFormat
from gateway.scopes import ScopePolicy
from gateway.store import ApiKey, Invalidation, Org, Store, StoreError

log = structlog.get_logger("gateway.identity")

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller: the key, its org, and its scopes with implications applied."""

    key: ApiKey
    org: Org
    scopes: frozenset[str]
    networks: tuple[IPNetwork, ...]  # the key's allowed_ips, parsed once


@dataclass(slots=True)
class _Entry:
    identity: Identity | None  # None: no usable key has this hash (negative cache)
    fetched_at: float


class KeyRing:
    """Resolves secrets to identities. A warm key is a dict lookup: no store round trip.

    Entries leave the cache when the store announces a change (revocation, rotation, a plan
    change), and in any case after ``cache_ttl``; while the store's invalidation channel is down,
    after one second. Expiry and rotation grace are checked on every request against the clock.
    When the store cannot be reached, an entry that was a good key is served stale rather than
    failing every caller; the whole cache is dropped once the channel is back.
    """

    NEGATIVE_TTL = 5.0
    UNTRUSTED_TTL = 1.0  # while invalidations may be missed
    MAX_ENTRIES = 100_000

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
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[Identity | None]] = {}
        self._pending_use: dict[str, float] = {}
        self._last_written: dict[str, float] = {}
        self._flusher: asyncio.Task[None] | None = None
        self.stale_served = 0
        store.subscribe(self._invalidate)

    async def startup(self) -> None:
        self._flusher = asyncio.create_task(self._flush_periodically(), name="gateway-last-used")

    async def shutdown(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        await self.flush_last_used()

    def _invalidate(self, message: Invalidation) -> None:
        if message.kind == "key":
            self._cache.pop(message.ref, None)
        elif message.kind == "org":
            stale = [
                h
                for h, e in self._cache.items()
                if e.identity is not None and e.identity.org.id == message.ref
            ]
            for key_hash in stale:
                del self._cache[key_hash]
        else:
            self._cache.clear()

    def _ttl(self, entry: _Entry) -> float:
        if entry.identity is None:
            return self.NEGATIVE_TTL
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
        entry = self._cache.get(key_hash)
        if entry is None or now - entry.fetched_at > self._ttl(entry):
            try:
                identity = await self._fetch(key_hash)
            except StoreError:
                # Stale if error: a key that was good when last checked keeps working while the
                # store is down (expiry is still checked below); an unknown key gets a 503.
                if entry is None or entry.identity is None:
                    raise
                self.stale_served += 1
            else:
                entry = _Entry(identity, now)
                self._remember(key_hash, entry)
        identity = entry.identity
        if identity is None or not identity.key.usable_at(now):
            return None
        self._mark_used(identity.key.id, now)
        return identity

    async def _fetch(self, key_hash: str) -> Identity | None:
        # Concurrent first requests with one key share one store lookup.
        pending = self._inflight.get(key_hash)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Identity | None] = asyncio.get_running_loop().create_future()
        self._inflight[key_hash] = future
        try:
            identity = await self._load(key_hash)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here: waiters re-raise it themselves
            raise
        finally:
            del self._inflight[key_hash]
        future.set_result(identity)
        return identity

    async def _load(self, key_hash: str) -> Identity | None:
        key = await self.store.find_key(key_hash)
        if key is None:
            return None
        org = await self.store.get_org(key.org_id)
        if org is None:
            return None
        networks = tuple(ipaddress.ip_network(n, strict=False) for n in key.allowed_ips)
        return Identity(key, org, self.scopes.expand(key.scopes), networks)

    def _remember(self, key_hash: str, entry: _Entry) -> None:
        self._cache[key_hash] = entry
        self._cache.move_to_end(key_hash)
        while len(self._cache) > self.MAX_ENTRIES:
            self._cache.popitem(last=False)

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
