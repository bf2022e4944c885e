"""Where limit state lives: in this process, or in Redis with batched atomic scripts."""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import NoScriptError

from gateway.ratelimit.policy import US, Decision, Limit, Outcome, State, evaluate
from gateway.ratelimit.window import SlidingWindow
from gateway.store.redis import REDIS_FAILURES

log = structlog.get_logger("gateway.ratelimit")

# State outlives its meaning by this much, so instances whose clocks differ a little never see
# a refused client's bucket vanish early.
_TTL_MARGIN_MS = 60_000
# How long one batch of decisions may take in Redis before its requests see a store error.
BATCH_TIMEOUT = 1.0
# A sliding window is saved as one row per sub-bucket, "<limit key>#<end in us>", which
# expires on its own when the sub-bucket stops counting.
_SUB_BUCKET = "#"

Entry = tuple[list[str], list[Any], "asyncio.Future[list[bytes]]"]


class LimiterError(Exception):
    """The shared limit store could not decide; the outage policy says what happens."""


def _ttl_ms(limit: Limit, now_us: int) -> int:
    """How long state must live: until a bucket is full again, the newest sub-bucket of a
    sliding window (at most a granule ahead) stops counting, or the window is over."""
    if limit.kind == "gcra":
        return math.ceil(limit.capacity * limit.interval_us / 1000) + _TTL_MARGIN_MS
    if limit.kind == "sliding":
        return math.ceil((limit.per_us + limit.granule_us) / 1000) + _TTL_MARGIN_MS
    return math.ceil(max(0, limit.window_end_us - now_us) / 1000) + _TTL_MARGIN_MS


class LocalLimits:
    """State in a dict: exact for one process. Decisions are synchronous, so atomic."""

    SWEEP_EVERY = 10_000

    def __init__(self) -> None:
        self._state: dict[str, State] = {}
        self._expires: dict[str, int] = {}  # epoch microseconds
        self._dirty: set[str] = set()  # changed since the last export
        self._sub_buckets: dict[str, tuple[int, int]] = {}  # saved rows changed since then
        self._decisions = 0

    async def decide(self, limits: Sequence[Limit], cost: int, now_us: int) -> Decision:
        decision, updates = evaluate(limits, self._state, cost, now_us)
        for limit in limits:
            value = updates.get(limit.key)
            if value is None:
                continue
            self._state[limit.key] = value
            self._expires[limit.key] = now_us + _ttl_ms(limit, now_us) * 1000
            if isinstance(value, SlidingWindow):
                end, units = value.buckets[-1]  # the sub-bucket this request was counted in
                row = f"{limit.key}{_SUB_BUCKET}{end}"
                self._sub_buckets[row] = (units, end + limit.per_us)
            else:
                self._dirty.add(limit.key)
        self._decisions += 1
        if self._decisions % self.SWEEP_EVERY == 0:
            self._sweep(now_us)
        return decision

    def export_changes(self) -> dict[str, tuple[int, int]]:
        """What changed since the last call, key -> (value, expires at in us), to be saved."""
        changed = {
            key: (value, self._expires[key])
            for key in self._dirty
            if isinstance(value := self._state.get(key), int)
        }
        changed.update(self._sub_buckets)
        self._dirty.clear()
        self._sub_buckets = {}
        return changed

    def restore(self, saved: dict[str, tuple[int, int]]) -> None:
        sub_buckets = []
        for key, (value, expires) in saved.items():
            limit_key, mark, ends_at = key.rpartition(_SUB_BUCKET)
            if mark and ends_at.isdigit():
                sub_buckets.append((int(ends_at), limit_key, value, expires))
            else:
                self._state[key] = value
                self._expires[key] = expires
        for end, limit_key, units, expires in sorted(sub_buckets):  # oldest first
            window = self._state.get(limit_key)
            if not isinstance(window, SlidingWindow):
                window = self._state[limit_key] = SlidingWindow()
            window.add(end, units)
            kept = expires + _TTL_MARGIN_MS * 1000
            self._expires[limit_key] = max(self._expires.get(limit_key, 0), kept)

    def _sweep(self, now_us: int) -> None:
        # Idle buckets are full and ended windows are over: their state means nothing now.
        for key in [k for k, at in self._expires.items() if at < now_us]:
            del self._expires[key]
            self._state.pop(key, None)
        # Nothing may ever export these (the outage fallback is never saved): keep only rows
        # that still count, so they stay as bounded as the windows themselves.
        rows = self._sub_buckets
        for row in [r for r, (_, until) in rows.items() if until <= now_us]:
            del rows[row]


class RedisLimits:
    """State in Redis. Each request is one script call that decides all its limits at once.

    One pipeline is in flight at a time: the calls that arrive meanwhile wait for the next one,
    so a slow Redis makes batches larger instead of opening ever more connections, and every
    request waits for at most one round trip plus the one before it.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._script = resources.files("gateway.ratelimit").joinpath("ratelimit.lua").read_text()
        self._sha = hashlib.sha1(self._script.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1
        self._queue: list[Entry] = []
        self._sender: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.round_trips = 0  # pipelines sent: fewer than decisions when requests overlap

    async def decide(self, limits: Sequence[Limit], cost: int, now_us: int) -> Decision:
        keys = [limit.key for limit in limits]
        args: list[Any] = [now_us, cost]
        for limit in limits:
            ttl = _ttl_ms(limit, now_us)
            if limit.kind == "gcra":
                args += ["g", limit.capacity, limit.interval_us, 0, ttl]
            elif limit.kind == "sliding":
                args += ["s", limit.capacity, limit.per_us, limit.granule_us, ttl]
            else:
                args += ["w", limit.capacity, limit.window_end_us, 0, ttl]
        loop = self._loop
        if loop is None:
            # Once: on Python 3.11 each asyncio.get_running_loop() is a getpid() system call.
            # The Redis client is bound to this loop already, so this object is too.
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[list[bytes]] = loop.create_future()
        self._queue.append((keys, args, future))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_all(), name="gateway-rate-limits")
        raw = await future
        outcomes = tuple(
            Outcome(
                policy=limit.policy,
                allowed=raw[1 + i * 4] == b"1",
                limit=limit.capacity,
                window=limit.window,
                remaining=int(raw[2 + i * 4]),
                reset=int(raw[3 + i * 4]) / US,
                retry_after=int(raw[4 + i * 4]) / US,
            )
            for i, limit in enumerate(limits)
        )
        return Decision(raw[0] == b"1", outcomes)

    async def _send_all(self) -> None:
        try:
            await asyncio.sleep(0)  # let the rest of this tick join the first batch
            while self._queue:
                batch, self._queue = self._queue, []
                # A request that gave up before its batch left is not counted.
                batch = [entry for entry in batch if not entry[2].done()]
                if batch:
                    await self._send(batch)
        except BaseException as exc:
            # Whatever happened, no request may wait forever on a future nobody will set.
            for _, _, future in self._queue:
                if not future.done():
                    future.set_exception(LimiterError(f"rate limits unavailable: {exc!r}"))
            self._queue = []
            if not isinstance(exc, Exception):
                raise
            log.exception("rate_limit_sender_failed")
        finally:
            self._sender = None
            if self._queue:  # arrived while we were finishing: start the next sender
                self._sender = asyncio.create_task(self._send_all(), name="gateway-rate-limits")

    async def _send(self, batch: list[Entry]) -> None:
        pending = batch
        try:
            for _ in range(2):
                results = await self._pipeline(pending)
                retry = []
                for entry, result in zip(pending, results, strict=True):
                    future = entry[2]
                    if future.done():
                        continue
                    if isinstance(result, NoScriptError):
                        retry.append(entry)  # Redis lost our script (restart, flush)
                    elif isinstance(result, Exception):
                        future.set_exception(LimiterError(str(result)))
                    else:
                        future.set_result(result)
                if not retry:
                    return
                async with asyncio.timeout(BATCH_TIMEOUT):
                    await self._client.script_load(self._script)
                pending = retry
            for _, _, future in pending:
                if not future.done():
                    future.set_exception(LimiterError("the rate-limit script could not be loaded"))
        except BaseException as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(LimiterError(str(exc) or type(exc).__name__))
            if not isinstance(exc, REDIS_FAILURES):
                raise

    async def _pipeline(self, batch: list[Entry]) -> list[Any]:
        self.round_trips += 1
        # One deadline for the whole batch: the client has no per-command timeout (see the
        # store), and a Redis that stops answering must fail the batch, not hold it.
        async with asyncio.timeout(BATCH_TIMEOUT), self._client.pipeline(transaction=False) as pipe:
            for keys, args, _ in batch:
                pipe.evalsha(self._sha, len(keys), *keys, *args)
            return await pipe.execute(raise_on_error=False)
