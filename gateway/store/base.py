"""The state store interface; ``local`` (SQLite) and ``redis`` implement it identically."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from gateway.errors import GatewayError
from gateway.store.models import ApiKey, Org

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from gateway.store.activity_base import ActivityStore
    from gateway.store.webhook_base import WebhookStore


class StoreError(Exception):
    """The store could not be reached or failed; callers map it to 503, never to 401."""


class Conflict(GatewayError):
    status, code = 409, "conflict"


@dataclass(frozen=True, slots=True)
class Invalidation:
    """A change other instances must drop from their caches."""

    kind: Literal["key", "org", "all"]
    ref: str = ""  # the key's hash, or the org's id

    def encode(self) -> str:
        return f"{self.kind}:{self.ref}"

    @classmethod
    def decode(cls, text: str) -> Invalidation:
        kind, _, ref = text.partition(":")
        if kind == "key":
            return cls("key", ref)
        if kind == "org":
            return cls("org", ref)
        return cls("all")


InvalidationListener = Callable[[Invalidation], None]
T = TypeVar("T")
Change = Callable[[T], T]


@dataclass(frozen=True, slots=True)
class IdempotencyBegin:
    """What a store says when a request with an Idempotency-Key arrives."""

    outcome: Literal["acquired", "mismatch", "in_flight", "replay"]
    response: bytes | None = None  # the stored response, for "replay"


class LimitState(Protocol):
    """Where a process's own limit counts are saved, to survive a restart."""

    async def load_limit_state(self, now_us: int) -> dict[str, tuple[int, int]]:
        """The saved counts still in force: key -> (value, expires at in us)."""

    async def save_limit_state(self, changed: Mapping[str, tuple[int, int]], now_us: int) -> None:
        """Save what changed (key -> (value, expires at in us)) and forget what expired."""


class Store(ABC):
    """Orgs, keys, idempotency records, saved limit counts, and webhooks."""

    webhooks: WebhookStore  # endpoints and the delivery queue, on the same backend
    activity: ActivityStore  # the request log, usage counts and the audit log, likewise

    def __init__(self) -> None:
        self._listeners: list[InvalidationListener] = []

    # -- What a backend can do beyond the common interface. The process asks these, never the
    # store's type; a backend that cannot do a thing answers None. Asked once started.

    @property
    def invalidation_live(self) -> bool | None:
        """Whether changes made by other instances reach this one now: True or False while the
        channel that brings them is up or down; None where no other instance shares the data."""
        return None

    def shared_limits(self) -> Redis | None:
        """The server where the limit counters of every instance on this store meet (the rate
        limiter runs its script there); None: each process counts alone."""
        return None

    def limit_state(self) -> LimitState | None:
        """Where a process that counts limits alone saves its counts; None: nowhere."""
        return None

    def event_stream(self) -> Redis | None:
        """The server whose streams backends may XADD events to; None: no event stream."""
        return None

    async def topology(self) -> dict[str, Any] | None:
        """For /readyz, what a store made of several servers can say of them (a cluster: its
        state and the masters it cannot reach); None: one server, nothing more than ping."""
        return None

    def subscribe(self, listener: InvalidationListener) -> None:
        """Call listener for every change made by any instance (this one included)."""
        self._listeners.append(listener)

    def _notify(self, message: Invalidation) -> None:
        for listener in self._listeners:
            listener(message)

    @abstractmethod
    async def startup(self) -> None: ...

    @abstractmethod
    async def shutdown(self) -> None: ...

    @abstractmethod
    async def ping(self) -> None:
        """Raise StoreError when the store cannot serve."""

    @abstractmethod
    async def create_org(self, org: Org) -> None:
        """Raise Conflict when the slug is taken."""

    @abstractmethod
    async def get_org(self, ref: str) -> Org | None:
        """By id (``org_…``) or slug."""

    @abstractmethod
    async def list_orgs(self) -> list[Org]: ...

    @abstractmethod
    async def update_org(self, org_id: str, change: Change[Org]) -> Org | None:
        """Apply change to the org as stored now, in one atomic step; None if there is none."""

    @abstractmethod
    async def create_key(self, key: ApiKey) -> None: ...

    @abstractmethod
    async def get_key(self, key_id: str) -> ApiKey | None: ...

    @abstractmethod
    async def find_key(self, key_hash: str) -> ApiKey | None: ...

    @abstractmethod
    async def list_keys(
        self, org_id: str, *, offset: int = 0, limit: int | None = None
    ) -> list[ApiKey]:
        """The org's keys, oldest first; ``offset`` and ``limit`` (>= 1) read one page of them.

        Keys are never deleted, so reading page after page misses none (a key created meanwhile
        can only push one already read into the next page).
        """

    @abstractmethod
    async def update_key(self, key_id: str, change: Change[ApiKey]) -> ApiKey | None:
        """Apply change to the key as stored now, in one atomic step, and tell every instance.

        Read-modify-write in one step: two admins (a revoke and a rotate) never undo each
        other's change. change may raise to abort; nothing is written then.
        """

    @abstractmethod
    async def idempotency_begin(
        self, scope: str, fingerprint: str, token: str, now: float, lock_seconds: float
    ) -> IdempotencyBegin:
        """Take the lock for scope, or report a replay, a request in flight or a mismatch.

        A lock older than lock_seconds is taken over: a crashed gateway cannot wedge a key.
        """

    @abstractmethod
    async def idempotency_renew(
        self, scope: str, token: str, now: float, lock_seconds: float
    ) -> bool:
        """Extend the lock of a holder that is still working; False if it lost the lock."""

    @abstractmethod
    async def idempotency_finish(
        self, scope: str, token: str, response: bytes | None, now: float, keep_seconds: float
    ) -> bool:
        """Store the response (or, with None, drop the record), if token still holds the lock."""

    @abstractmethod
    async def touch_keys(self, last_used: Mapping[str, tuple[str, float]]) -> None:
        """Record last-used times (key id -> (its org id, time)); only ever moves them
        forward."""
