"""Events from a Redis stream, for backends that would rather XADD than call the admin API.

    XADD gw:events '*' org acme type invoice.created data '{"id": "inv_1"}'

Every gateway instance reads the stream in one consumer group, so each entry is taken by one
of them. An entry is acknowledged (and deleted) once its event is queued; the event id is
derived from the entry id, so an entry read twice (after a crash) queues nothing twice. An
entry that cannot be an event is logged and dropped, never retried forever.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import orjson
import redis.asyncio as aioredis
import structlog
from redis.exceptions import ResponseError

from gateway.breaker import Backoff
from gateway.store import Store, StoreError
from gateway.store.redis import REDIS_FAILURES
from gateway.tasks import cancel_and_wait
from gateway.webhooks.service import (
    MAX_EVENT_BYTES,
    WebhookService,
    check_event_data,
    check_event_type,
    stable_event_id,
)

log = structlog.get_logger("gateway.webhooks")

GROUP = "gateway"
_BLOCK_MS = 500  # under the client's socket timeout
_STALE_MS = 60_000  # entries a dead consumer read but never acknowledged are taken over


class StreamRefused(ValueError):
    """An entry that is not an event; the message says why."""


class EventStream:
    """Reads the stream ``name`` on ``client`` (the store's event stream server) in the group."""

    def __init__(
        self, client: aioredis.Redis, store: Store, service: WebhookService, name: str
    ) -> None:
        self.client = client
        self.store = store
        self.service = service
        self.name = name
        self.consumer = f"{socket.gethostname()}:{os.getpid()}"
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gateway-event-stream")

    async def shutdown(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        # Every instance reads the stream: after an outage, jitter spreads their returns.
        backoff = Backoff(0.5, 10.0, jitter=0.5)
        while True:
            try:
                await self._ensure_group()
                backlog = True  # first what this consumer read before and did not finish
                while True:
                    await self._take_over_stale()
                    start = "0" if backlog else ">"
                    reply: Any = await self.client.xreadgroup(
                        GROUP, self.consumer, {self.name: start}, count=100, block=_BLOCK_MS
                    )
                    entries = reply[0][1] if reply else []
                    if backlog and not entries:
                        backlog = False
                    for entry_id, fields in entries:
                        await self._handle(entry_id.decode(), fields)
                    backoff.reset()
            except asyncio.CancelledError:
                raise
            except (*REDIS_FAILURES, StoreError) as exc:
                log.warning("event_stream_unavailable", stream=self.name, error=str(exc))
            except Exception:
                log.exception("event_stream_error", stream=self.name)
            await asyncio.sleep(backoff.next_delay())

    async def _ensure_group(self) -> None:
        try:
            await self.client.xgroup_create(self.name, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _take_over_stale(self) -> None:
        reply: Any = await self.client.xautoclaim(
            self.name, GROUP, self.consumer, min_idle_time=_STALE_MS, count=100
        )
        for entry_id, fields in reply[1] if len(reply) > 1 else []:
            if fields is not None:  # None: the entry was deleted meanwhile
                await self._handle(entry_id.decode(), fields)

    async def _handle(self, entry_id: str, fields: dict[bytes, bytes] | None) -> None:
        try:
            org_ref, event_type, data = _parse(fields or {})
            org = await self.store.get_org(org_ref)
            if org is None:
                raise StreamRefused(f"no org {org_ref!r}")
        except StreamRefused as exc:
            log.error(
                "event_stream_entry_refused", stream=self.name, entry=entry_id, error=str(exc)
            )
        else:
            # A store error propagates: the entry stays unacknowledged and is read again.
            await self.service.publish(
                org.id,
                event_type,
                data,
                source="stream",
                event_id=stable_event_id(self.name, entry_id),
            )
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xack(self.name, GROUP, entry_id)
            pipe.xdel(self.name, entry_id)
            await pipe.execute()


def _parse(fields: dict[bytes, bytes]) -> tuple[str, str, Any]:
    text = {k.decode(errors="replace"): v for k, v in fields.items()}
    org = text.get("org", b"").decode(errors="replace")
    event_type = text.get("type", b"").decode(errors="replace")
    if not org or not event_type:
        raise StreamRefused("an entry needs the fields org and type (and data, JSON)")
    try:
        check_event_type(event_type)
    except ValueError as exc:
        raise StreamRefused(f"type {exc}") from None
    raw = text.get("data", b"{}")
    if len(raw) > MAX_EVENT_BYTES:
        raise StreamRefused(f"data is over {MAX_EVENT_BYTES // 1024} KiB")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise StreamRefused("data is not JSON") from None
    try:
        check_event_data(data)
    except ValueError as exc:
        raise StreamRefused(f"data {exc}") from None
    return org, event_type, data
