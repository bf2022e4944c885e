"""Webhook endpoints and events as operations, shared by the admin API and ``/v1/webhooks``.

Each operation takes an org scope: the admin API passes None (any org), the data plane the
caller's org, so a key can never see or touch another org's endpoints.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import structlog
from pydantic import Field, ValidationInfo, field_validator

from gateway.api.bodies import Body, parse_body
from gateway.api.bounds import SecretOverlap
from gateway.api.views import NotFound, find_org, iso
from gateway.config import GatewayConfig
from gateway.config.types import FIELD_NAME
from gateway.config.webhooks import EVENT_TYPE
from gateway.errors import BadRequest, GatewayError, PayloadTooLarge
from gateway.keys.secrets import ALPHABET
from gateway.observability.metrics import Metrics
from gateway.store import Conflict, Org, Store, new_id
from gateway.store.webhook_models import PING, Delivery, Endpoint, Event, Secret
from gateway.webhooks.payload import PayloadShape
from gateway.webhooks.secret_box import SecretBox
from gateway.webhooks.signing import new_secret
from gateway.webhooks.targets import UnsafeTarget, check_registration, check_url

log = structlog.get_logger("gateway.webhooks")

Clock = Callable[[], float]
MAX_EVENT_BYTES = 256 * 1024
# Nesting allowed in an event's data; the encoder of the delivery body stops at 254 levels.
MAX_EVENT_DEPTH = 100
MAX_DELIVERIES_LISTED = 100


class PlanLimitReached(GatewayError):
    status, code = 403, "plan_limit_reached"


def check_event_type(value: str) -> str:
    if not isinstance(value, str) or not EVENT_TYPE.fullmatch(value):
        raise ValueError(
            f"must be 1-100 letters, digits or _.:- starting with a letter or digit (got {value!r})"
        )
    return value


def check_event_data(value: Any) -> Any:
    """Refuse data nested deeper than MAX_EVENT_DEPTH (it could not be sent)."""
    level = [value]
    for _ in range(MAX_EVENT_DEPTH + 1):
        level = [
            child
            for item in level
            if isinstance(item, dict | list)
            for child in (item.values() if isinstance(item, dict) else item)
        ]
        if not level:
            return value
    raise ValueError(f"must be nested at most {MAX_EVENT_DEPTH} levels deep")


def _check_events(value: tuple[str, ...]) -> tuple[str, ...]:
    if not value:
        raise ValueError('list at least one event type, or "*" for all')
    if len(value) > 100:
        raise ValueError("at most 100 event types")
    return tuple(dict.fromkeys(v if v == "*" else check_event_type(v) for v in value))


def _check_target(value: str, info: ValidationInfo) -> str:
    if len(value) > 2048:
        raise ValueError("must be at most 2048 characters")
    try:
        check_url(value, allow_private=(info.context or {}).get("allow_private", False))
    except (UnsafeTarget, ValueError) as exc:
        raise ValueError(str(exc)) from None
    return value


def _check_filters(value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    if len(value) > MAX_FILTERS:
        raise ValueError(f"at most {MAX_FILTERS} fields")
    for name, wanted in value.items():
        if not FIELD_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a field name (letters, digits and _)")
        if not wanted or len(wanted) > 100:
            raise ValueError(f"{name}: list 1 to 100 values")
        for item in wanted:
            if not item or len(item) > 200:
                raise ValueError(f"{name}: each value is 1 to 200 characters")
    return {name: tuple(dict.fromkeys(wanted)) for name, wanted in value.items()}


# Filters on fields of the published data: which of an org's events an endpoint gets.
MAX_FILTERS = 10
_FILTERS_DESCRIPTION = (
    'Fields of the published data and the values wanted, e.g. {"module": ["leads"]}: only'
    " events whose data holds one of them (strings and integers, compared as text)."
)


class CreateEndpoint(Body):
    url: str = Field(description="A public http(s) URL.")
    events: tuple[str, ...] = Field(description='Event types, or "*" for every type.')
    description: str = Field("", max_length=500)
    filters: dict[str, tuple[str, ...]] = Field(
        default_factory=dict, description=_FILTERS_DESCRIPTION
    )

    _url = field_validator("url")(_check_target)
    _events = field_validator("events")(_check_events)
    _filters = field_validator("filters")(_check_filters)


class UpdateEndpoint(Body):
    url: str | None = None
    events: tuple[str, ...] | None = None
    description: str | None = Field(None, max_length=500)
    status: str | None = Field(None, pattern="^(enabled|disabled)$")
    filters: dict[str, tuple[str, ...]] | None = Field(
        None, description=_FILTERS_DESCRIPTION + " Replaces them all; {} removes them."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _check_target(value, info)

    @field_validator("events")
    @classmethod
    def _events(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if value is None else _check_events(value)

    @field_validator("filters")
    @classmethod
    def _filters(
        cls, value: dict[str, tuple[str, ...]] | None
    ) -> dict[str, tuple[str, ...]] | None:
        return None if value is None else _check_filters(value)


class RotateSecret(Body):
    overlap: SecretOverlap | None = Field(
        None,
        description="How long the old secret also signs, up to 30d"
        " (default webhooks.secret_overlap).",
    )


class PublishEvent(Body):
    org: str = Field(description="The org's id or slug.")
    type: str
    data: Any = Field(default_factory=dict)

    _type = field_validator("type")(check_event_type)
    _data = field_validator("data")(check_event_data)


def endpoint_view(endpoint: Endpoint, now: float, secret: str | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {"id": endpoint.id}
    if secret is not None:
        view["secret"] = secret  # SECURITY: only in the answers to create and rotate
    view.update(
        {
            "orgId": endpoint.org_id,
            "url": endpoint.url,
            "events": list(endpoint.events),
            "filters": {name: list(wanted) for name, wanted in endpoint.filters.items()},
            "description": endpoint.description,
            "status": endpoint.status,
            "disabledReason": endpoint.disabled_reason,
            "secretRotating": len(endpoint.signing_secrets(now)) > 1,
            "createdAt": iso(endpoint.created_at),
            "updatedAt": iso(endpoint.updated_at),
        }
    )
    return view


def delivery_view(delivery: Delivery, now: float) -> dict[str, Any]:
    status = "delivering" if delivery.in_flight(now) else delivery.status
    return {
        "id": delivery.id,
        "endpointId": delivery.endpoint_id,
        "eventId": delivery.event_id,
        "eventType": delivery.event_type,
        "status": status,
        "attempts": delivery.attempts,
        "lastStatus": delivery.last_status,
        "nextAttemptAt": iso(delivery.next_at) if delivery.status == "pending" else None,
        "createdAt": iso(delivery.created_at),
        "updatedAt": iso(delivery.updated_at),
        "history": [
            {
                "attempt": a.number,
                "at": iso(a.at),
                "status": a.status,
                "durationMs": round(a.duration * 1000, 1),
                "success": a.success,
                "error": a.error,
                "response": a.response,
            }
            for a in delivery.history
        ],
    }


def stable_event_id(*parts: str) -> str:
    """An event id that the same source always gets, so a repeated publish is a no-op."""
    digest = int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:16], "big")
    chars = []
    for _ in range(20):
        digest, index = divmod(digest, len(ALPHABET))
        chars.append(ALPHABET[index])
    return "evt_" + "".join(chars)


class WebhookService:
    def __init__(
        self,
        store: Store,
        config: GatewayConfig,
        *,
        metrics: Metrics | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.store = store
        self.config = config  # replaced on reload
        self.metrics = metrics
        self.clock = clock
        self.on_enqueue: Callable[[], None] | None = None  # wakes this process's dispatcher
        # webhooks is restart-only: these are fixed for the life of the process.
        self.box = SecretBox(config.webhooks.secret_key)
        self.shape = PayloadShape(config.webhooks)

    async def _check_resolves(self, url: str) -> None:
        try:
            await check_registration(url, allow_private=self.config.webhooks.allow_private_targets)
        except UnsafeTarget as exc:
            raise BadRequest(f"url: {exc}") from None

    def _context(self) -> dict[str, Any]:
        return {"allow_private": self.config.webhooks.allow_private_targets}

    # -- endpoints -------------------------------------------------------------------------

    async def create_endpoint(self, org: Org, raw: bytes) -> dict[str, Any]:
        body: CreateEndpoint = parse_body(raw, CreateEndpoint, self._context())
        await self._check_resolves(body.url)
        now = self.clock()
        secret = new_secret()
        endpoint = Endpoint(
            id=new_id("wh"),
            org_id=org.id,
            url=body.url,
            events=body.events,
            secrets=(Secret(self.box.seal(secret)),),
            created_at=now,
            description=body.description,
            filters=dict(body.filters),
        )
        cap = self.endpoint_cap(org)
        if not await self.store.webhooks.create_endpoint(endpoint, cap):
            raise PlanLimitReached(
                f"The plan {org.plan!r} allows {cap} webhook endpoint{'s' if cap != 1 else ''};"
                " delete one first or change the org's plan."
            )
        return endpoint_view(endpoint, now, secret)

    def endpoint_cap(self, org: Org) -> int | None:
        """How many endpoints the org's plan allows (None: no cap; an unknown plan: none)."""
        plan = self.config.plans.get(org.plan)
        return 0 if plan is None else plan.webhook_endpoints

    async def list_endpoints(self, org: Org) -> list[dict[str, Any]]:
        now = self.clock()
        return [endpoint_view(e, now) for e in await self.store.webhooks.list_endpoints(org.id)]

    async def _endpoint(self, endpoint_id: str, org_id: str | None) -> Endpoint:
        endpoint = await self.store.webhooks.get_endpoint(endpoint_id, org_id)
        if endpoint is None or (org_id is not None and endpoint.org_id != org_id):
            raise NotFound(f"No webhook endpoint {endpoint_id!r}.")
        return endpoint

    async def get_endpoint(self, endpoint_id: str, org_id: str | None) -> dict[str, Any]:
        return endpoint_view(await self._endpoint(endpoint_id, org_id), self.clock())

    async def update_endpoint(
        self, endpoint_id: str, org_id: str | None, raw: bytes
    ) -> dict[str, Any]:
        endpoint = await self._endpoint(endpoint_id, org_id)
        body: UpdateEndpoint = parse_body(raw, UpdateEndpoint, self._context())
        if body.url is not None:
            await self._check_resolves(body.url)
        now = self.clock()
        changes: dict[str, Any] = {"updated_at": now}
        for field in ("url", "events", "description", "filters"):
            if getattr(body, field) is not None:
                changes[field] = getattr(body, field)
        if body.status is not None:
            changes["status"] = body.status
            changes["disabled_reason"] = (
                None if body.status == "enabled" else "disabled by an admin"
            )
        return endpoint_view(await self._change(endpoint, changes), now)

    async def _change(self, endpoint: Endpoint, changes: dict[str, Any]) -> Endpoint:
        endpoint_id = endpoint.id
        changed = await self.store.webhooks.update_endpoint(
            endpoint_id, lambda e: e.with_changes(**changes), endpoint.org_id
        )
        if changed is None:
            raise NotFound(f"No webhook endpoint {endpoint_id!r}.")
        return changed

    async def delete_endpoint(self, endpoint_id: str, org_id: str | None) -> dict[str, Any]:
        endpoint = await self._endpoint(endpoint_id, org_id)
        if not await self.store.webhooks.delete_endpoint(endpoint_id, endpoint.org_id):
            raise NotFound(f"No webhook endpoint {endpoint_id!r}.")
        return {"id": endpoint_id, "deleted": True}

    async def rotate_secret(
        self, endpoint_id: str, org_id: str | None, raw: bytes
    ) -> dict[str, Any]:
        endpoint = await self._endpoint(endpoint_id, org_id)
        body: RotateSecret = parse_body(raw, RotateSecret, self._context())
        overlap = self.config.webhooks.secret_overlap if body.overlap is None else body.overlap
        now = self.clock()
        secret = new_secret()

        def rotate(endpoint: Endpoint) -> Endpoint:
            # The old secret keeps signing until the overlap ends; older ones are dropped.
            current = Secret(endpoint.secrets[0].value, now + overlap)
            kept = (current,) if overlap > 0 else ()
            return endpoint.with_changes(
                secrets=(Secret(self.box.seal(secret)), *kept), updated_at=now
            )

        changed = await self.store.webhooks.update_endpoint(endpoint_id, rotate, endpoint.org_id)
        if changed is None:
            raise NotFound(f"No webhook endpoint {endpoint_id!r}.")
        return endpoint_view(changed, now, secret)

    async def ping(self, endpoint_id: str, org_id: str | None) -> dict[str, Any]:
        endpoint = await self._endpoint(endpoint_id, org_id)
        if endpoint.status != "enabled":
            raise Conflict("The endpoint is disabled; enable it before pinging it.")
        event_id = await self._publish(
            endpoint.org_id, PING, {"endpointId": endpoint.id}, [endpoint], source="ping"
        )
        return {"eventId": event_id}

    async def deliveries(
        self, endpoint_id: str, org_id: str | None, limit: int = MAX_DELIVERIES_LISTED
    ) -> list[dict[str, Any]]:
        endpoint = await self._endpoint(endpoint_id, org_id)
        found = await self.store.webhooks.list_deliveries(endpoint_id, limit, endpoint.org_id)
        now = self.clock()
        return [delivery_view(d, now) for d in found]

    async def _delivery(
        self, delivery_id: str, org_id: str | None, endpoint_id: str | None = None
    ) -> Delivery:
        delivery = await self.store.webhooks.get_delivery(delivery_id, org_id)
        if (
            delivery is None
            or (org_id is not None and delivery.org_id != org_id)
            or (endpoint_id is not None and delivery.endpoint_id != endpoint_id)
        ):
            raise NotFound(f"No delivery {delivery_id!r}.")
        return delivery

    async def get_delivery(
        self, delivery_id: str, org_id: str | None, endpoint_id: str | None = None
    ) -> dict[str, Any]:
        return delivery_view(await self._delivery(delivery_id, org_id, endpoint_id), self.clock())

    async def retry_delivery(self, delivery_id: str, org_id: str | None) -> dict[str, Any]:
        found = await self._delivery(delivery_id, org_id)
        now = self.clock()
        delivery = await self.store.webhooks.retry(delivery_id, now, found.org_id)
        if delivery is None:
            raise NotFound(f"No delivery {delivery_id!r}.")
        self._wake()
        return delivery_view(delivery, now)

    # -- events ----------------------------------------------------------------------------

    async def publish_from_admin(self, raw: bytes) -> dict[str, Any]:
        if len(raw) > MAX_EVENT_BYTES:
            raise PayloadTooLarge(MAX_EVENT_BYTES)
        body: PublishEvent = parse_body(raw, PublishEvent, self._context())
        org = await find_org(self.store, body.org)
        return {"id": await self.publish(org.id, body.type, body.data, source="admin")}

    async def publish(
        self, org_id: str, event_type: str, data: Any, *, source: str, event_id: str | None = None
    ) -> str:
        """Queue the event for every enabled endpoint of the org that subscribes to its type
        (by the gateway's name for one of its own events, or by the alias the body carries)."""
        alias = self.shape.type_name(event_type)
        endpoints = [
            e
            for e in await self.store.webhooks.list_endpoints(org_id)
            if (e.wants(event_type) or e.wants(alias)) and e.accepts(data)
        ]
        return await self._publish(org_id, event_type, data, endpoints, source, event_id)

    async def _publish(
        self,
        org_id: str,
        event_type: str,
        data: Any,
        endpoints: list[Endpoint],
        source: str,
        event_id: str | None = None,
    ) -> str:
        now = self.clock()
        event_id = event_id or new_id("evt")
        if not endpoints:
            return event_id  # nobody listens: nothing to keep
        payload = self.shape.body(event_id, event_type, now, data)
        event = Event(event_id, org_id, event_type, now, payload)
        deliveries = [
            Delivery(new_id("dlv"), e.id, org_id, event_id, event_type, payload, now, next_at=now)
            for e in endpoints
        ]
        if await self.store.webhooks.enqueue(event, deliveries, self.config.webhooks.retention):
            if self.metrics is not None:
                self.metrics.webhook_events.labels(source).inc()
            self._wake()
        return event_id

    def _wake(self) -> None:
        if self.on_enqueue is not None:
            self.on_enqueue()
