"""The delivery loop of one process: claim due deliveries, attempt them, record what happened.

Every process with a store runs one. Claims are leased in the store, so with several
instances each attempt is made by exactly one of them; a process killed mid-attempt loses
its lease and the delivery is attempted again (at least once, with the same webhook-id).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import structlog

from gateway.breaker import Backoff
from gateway.config import WebhooksConfig
from gateway.observability.metrics import Metrics
from gateway.store import StoreError
from gateway.store.webhook_base import Outcome, WebhookStore
from gateway.store.webhook_models import Attempt, Delivery, Endpoint
from gateway.tasks import cancel_and_wait
from gateway.webhooks.secret_box import SecretBox, SecretUnavailable
from gateway.webhooks.sender import Sender

log = structlog.get_logger("gateway.webhooks")

Clock = Callable[[], float]
MAX_RETRY_AFTER = 86400.0  # a Retry-After is honoured up to a day
_HOUSEKEEPING_EVERY = 30.0
_FINISH_TRIES = 3


def lease_for(config: WebhooksConfig) -> float:
    """How long a claim holds a delivery: the longest attempt, twice, and some slack."""
    return config.timeout * 2 + 5.0


def next_wait(
    config: WebhooksConfig, attempt: int, retry_after: float | None, rng: random.Random
) -> float | None:
    """Seconds until the next attempt after failed attempt number ``attempt``; None: dead."""
    schedule = config.retry_schedule
    if attempt > len(schedule):
        return None
    wait = schedule[attempt - 1] * rng.uniform(1 - config.jitter, 1 + config.jitter)
    if retry_after is not None:
        wait = max(wait, min(retry_after, MAX_RETRY_AFTER))
    return wait


class Dispatcher:
    def __init__(
        self,
        store: WebhookStore,
        config: WebhooksConfig,
        metrics: Metrics,
        *,
        clock: Clock = time.time,
        housekeeping: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.config = config  # replaced on reload
        self.metrics = metrics
        self.clock = clock
        self._housekeeping = housekeeping
        self._sender = Sender(
            allow_private=config.allow_private_targets, max_connections=config.concurrency
        )
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._attempts: set[asyncio.Task[None]] = set()
        self._per_endpoint: Counter[str] = Counter()
        self._rng = random.Random()  # noqa: S311 - jitter, not security
        self._box = SecretBox(config.secret_key)
        self._last_housekeeping = 0.0
        self._housekeeping_task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Look for due deliveries now rather than at the next poll."""
        self._wake.set()

    async def startup(self) -> None:
        await self._sender.startup()
        self._loop_task = asyncio.create_task(self._run(), name="gateway-webhooks")

    async def shutdown(self, grace: float = 5.0) -> None:
        """Stop claiming; give attempts in flight a moment, then hand theirs back."""
        await cancel_and_wait(self._loop_task, self._housekeeping_task)
        self._loop_task = None
        if self._attempts:
            _, pending = await asyncio.wait(self._attempts, timeout=grace)
            await cancel_and_wait(*pending)  # each hands its delivery back as it stops
        await self._sender.shutdown()

    async def _run(self) -> None:
        poll = self.config.poll_interval
        # After a failed tick, twice the poll interval and doubling, up to 10 s; every instance
        # polls the same queue, so jitter spreads their tries after an outage.
        backoff = Backoff(poll * 2, 10.0, jitter=0.5)
        while True:
            try:
                await self._tick()
                backoff.reset()
                delay = poll
            except StoreError as exc:
                log.warning("webhook_queue_unavailable", error=str(exc))
                delay = backoff.next_delay()
            except Exception:
                log.exception("webhook_dispatcher_error")
                delay = backoff.next_delay()
            # Not asyncio.wait_for: on Python 3.11 it returns, swallowing a cancellation that
            # arrives just after the wake-up (an attempt ending as the gateway stops), and this
            # loop would then run on while the shutdown waits for it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()

    async def _tick(self) -> None:
        now = self.clock()
        if now - self._last_housekeeping >= _HOUSEKEEPING_EVERY:
            self._last_housekeeping = now
            await self._housekeep(now)
        free = self.config.concurrency - len(self._attempts)
        if free <= 0:
            return
        token = secrets.token_hex(8)  # one per claim: a later claim never shares it
        # The store hands out at most per_endpoint_concurrency less what is in flight here to
        # each endpoint, so a slow endpoint keeps its own deliveries waiting, not others'.
        claimed = await self.store.claim(
            now,
            now + lease_for(self.config),
            free,
            token,
            per_endpoint=self.config.per_endpoint_concurrency,
            busy=dict(self._per_endpoint),
        )
        for delivery in claimed:
            self._per_endpoint[delivery.endpoint_id] += 1
            task = asyncio.create_task(self._attempt(delivery, token))
            self._attempts.add(task)
            task.add_done_callback(self._attempts.discard)

    async def _housekeep(self, now: float) -> None:
        pending, due = await self.store.queue_depth(now)
        self.metrics.webhook_queue.labels("pending").set(pending)
        self.metrics.webhook_queue.labels("due").set(due)
        await self.store.purge(now)
        if self._housekeeping is not None and (
            self._housekeeping_task is None or self._housekeeping_task.done()
        ):
            # In its own task: a long scan must not stop deliveries meanwhile.
            self._housekeeping_task = asyncio.create_task(self._run_housekeeping())

    async def _run_housekeeping(self) -> None:
        if self._housekeeping is None:
            return
        try:
            await self._housekeeping()
        except StoreError as exc:
            log.warning("webhook_housekeeping_failed", error=str(exc))
        except Exception:
            log.exception("webhook_housekeeping_error")

    async def _attempt(self, delivery: Delivery, token: str) -> None:
        try:
            try:
                outcome = await self._make_attempt(delivery)
            except (asyncio.CancelledError, StoreError):
                raise
            except Exception as exc:
                # A bug or an answer nothing expected: still an attempt, on the schedule, so
                # the delivery ends (dead) instead of coming back after every lease.
                log.exception("webhook_attempt_error", delivery=delivery.id)
                now = self.clock()
                attempt = Attempt(
                    delivery.attempts + 1, now, 0.0, None, False, error=f"internal error: {exc!r}"
                )
                outcome = self._after_failure(delivery, attempt, None)
            await self._finish(delivery, token, outcome)
        except asyncio.CancelledError:
            # Stopping mid-attempt: hand it back so another instance tries at once.
            with contextlib.suppress(StoreError):
                await self.store.release(delivery, token, self.clock())
            raise
        except StoreError as exc:
            # The lease runs out and the delivery is attempted again: at least once.
            log.warning("webhook_attempt_store_error", delivery=delivery.id, error=str(exc))
        finally:
            self._per_endpoint[delivery.endpoint_id] -= 1
            if self._per_endpoint[delivery.endpoint_id] <= 0:
                del self._per_endpoint[delivery.endpoint_id]
            # A slot is free: claim again now, not at the next poll, so a backlog drains at
            # the speed of its endpoint rather than per_endpoint_concurrency per poll.
            self._wake.set()

    async def _make_attempt(self, delivery: Delivery) -> Outcome:
        number = delivery.attempts + 1
        endpoint = await self.store.get_endpoint(delivery.endpoint_id, delivery.org_id)
        started = self.clock()
        if endpoint is None or endpoint.status != "enabled":
            why = "the endpoint was deleted" if endpoint is None else "the endpoint is disabled"
            attempt = Attempt(number, started, 0.0, None, False, error=f"not sent: {why}")
            return Outcome(attempt, "dead")
        config = self.config
        try:
            secrets = [self._box.open(s) for s in endpoint.signing_secrets(started)]
        except SecretUnavailable as exc:
            attempt = Attempt(number, started, 0.0, None, False, error=f"not sent: {exc}")
            return self._after_failure(delivery, attempt, None)
        result = await self._sender.send(
            endpoint.url,
            secrets=secrets,
            message_id=delivery.event_id,
            payload=delivery.payload,
            time_limit=config.timeout,
            legacy_header=config.legacy_header,
            legacy_key=config.legacy_key,
            clock=started,
        )
        self.metrics.webhook_attempt_duration.observe(result.duration)
        attempt = Attempt(
            number,
            started,
            result.duration,
            result.status,
            result.success,
            result.error,
            result.response,
        )
        if result.success:
            self.metrics.webhook_delivery_latency.observe(
                max(0.0, self.clock() - delivery.created_at)
            )
            return Outcome(attempt, "succeeded")
        if result.status == 410:
            await self._disable(endpoint, "the endpoint answered 410 Gone")
            return Outcome(attempt, "dead")
        return self._after_failure(delivery, attempt, result.retry_after)

    def _after_failure(
        self, delivery: Delivery, attempt: Attempt, retry_after: float | None
    ) -> Outcome:
        wait = (
            None
            if delivery.manual
            else next_wait(self.config, attempt.number, retry_after, self._rng)
        )
        if wait is None:
            return Outcome(attempt, "dead")
        return Outcome(attempt, "pending", self.clock() + wait)

    async def _disable(self, endpoint: Endpoint, reason: str) -> None:
        now = self.clock()
        await self.store.update_endpoint(
            endpoint.id,
            lambda e: e.with_changes(status="disabled", disabled_reason=reason, updated_at=now),
            endpoint.org_id,
        )
        log.warning("webhook_endpoint_disabled", endpoint=endpoint.id, reason=reason)

    async def _finish(self, delivery: Delivery, token: str, outcome: Outcome) -> None:
        result = {"succeeded": "delivered", "pending": "retrying", "dead": "dead"}[outcome.status]
        for attempt in range(_FINISH_TRIES):
            try:
                done = await self.store.finish(
                    delivery, token, outcome, self.clock(), self.config.retention
                )
                break
            except StoreError as exc:
                if attempt == _FINISH_TRIES - 1:
                    # The lease runs out and the delivery is attempted again: at least once.
                    log.error("webhook_finish_failed", delivery=delivery.id, error=str(exc))
                    return
                await asyncio.sleep(0.2 * (attempt + 1))
        if not done:
            result = "lost_lease"
            log.warning("webhook_lease_lost", delivery=delivery.id)
        self.metrics.webhook_deliveries.labels(result).inc()
        log.info(
            "webhook_attempt",
            delivery=delivery.id,
            endpoint=delivery.endpoint_id,
            event_id=delivery.event_id,
            event_type=delivery.event_type,
            attempt=outcome.attempt.number,
            status=outcome.attempt.status,
            result=result,
            error=outcome.attempt.error,
            duration_ms=round(outcome.attempt.duration * 1000, 1),
        )
