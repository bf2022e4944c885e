"""The webhook part of the store interface: endpoints, and a durable delivery queue with leases.

Both backends implement it alike and pass one contract suite. The queue's rules:

- an event and all its deliveries are written in one atomic step, once per event id;
- ``claim`` hands each due delivery to exactly one caller, with a lease; a caller that dies
  loses it when the lease runs out, and the delivery is due again (at least once);
- ``finish`` counts only for the holder of the lease, so a late holder cannot overwrite.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.store.base import Change
from gateway.store.webhook_models import Attempt, Delivery, DeliveryStatus, Endpoint, Event


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an attempt leaves behind: the attempt, and the delivery's next state."""

    attempt: Attempt
    status: DeliveryStatus
    next_at: float = 0.0  # when status is "pending"


class WebhookStore(ABC):
    @abstractmethod
    async def create_endpoint(self, endpoint: Endpoint, cap: int | None) -> bool:
        """Add it unless the org already has cap endpoints (checked in the same step)."""

    @abstractmethod
    async def get_endpoint(self, endpoint_id: str, org_id: str | None = None) -> Endpoint | None:
        """org_id, here and in the other lookups by id: the org the thing belongs to, when
        the caller knows it (found at once then, on a store that spreads orgs). Callers still
        check the org of what they get."""

    @abstractmethod
    async def list_endpoints(self, org_id: str) -> list[Endpoint]: ...

    @abstractmethod
    async def update_endpoint(
        self, endpoint_id: str, change: Change[Endpoint], org_id: str | None = None
    ) -> Endpoint | None:
        """Apply change to the endpoint as stored now, in one atomic step (org_id: as for
        get_endpoint)."""

    @abstractmethod
    async def delete_endpoint(self, endpoint_id: str, org_id: str | None = None) -> bool:
        """org_id: as for get_endpoint."""

    @abstractmethod
    async def enqueue(self, event: Event, deliveries: Sequence[Delivery], keep: float) -> bool:
        """Store the event and its deliveries, due now; False (and nothing written) when the
        event id is already known, so publishing the same event again is harmless."""

    @abstractmethod
    async def get_event(self, event_id: str) -> Event | None: ...

    @abstractmethod
    async def claim(
        self,
        now: float,
        lease_until: float,
        limit: int,
        token: str,
        *,
        per_endpoint: int,
        busy: Mapping[str, int],
    ) -> list[Delivery]:
        """Up to limit due deliveries, each leased to token until lease_until.

        Endpoint by endpoint: those the caller has nothing in flight to first, each group by
        its oldest due delivery; from each at most per_endpoint less what the caller has in
        flight to it (busy). Backlogs at endpoints the caller is busy with never keep other
        endpoints' deliveries waiting.
        """

    @abstractmethod
    async def finish(
        self, delivery: Delivery, token: str, outcome: Outcome, now: float, keep: float
    ) -> bool:
        """Record an attempt and the next state, if token still holds the lease.

        A finished delivery (succeeded or dead) is kept for keep seconds.
        """

    @abstractmethod
    async def release(self, delivery: Delivery, token: str, due: float) -> bool:
        """Give a claimed delivery back, unattempted, due again at due."""

    @abstractmethod
    async def retry(
        self, delivery_id: str, now: float, org_id: str | None = None
    ) -> Delivery | None:
        """Make it due now (a manual retry); None when unknown. Raises Conflict while an
        attempt is in flight."""

    @abstractmethod
    async def get_delivery(self, delivery_id: str, org_id: str | None = None) -> Delivery | None:
        """With its attempts."""

    @abstractmethod
    async def list_deliveries(
        self, endpoint_id: str, limit: int, org_id: str | None = None
    ) -> list[Delivery]:
        """The newest first, with their attempts."""

    @abstractmethod
    async def queue_depth(self, now: float) -> tuple[int, int]:
        """(deliveries pending, of which due now)."""

    @abstractmethod
    async def purge(self, now: float) -> None:
        """Forget events and finished deliveries past their keep time."""
