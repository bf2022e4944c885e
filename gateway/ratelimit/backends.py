"""Where limit state lives: in this process, or in Redis with batched atomic scripts."""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from gateway.ratelimit.policy import Decision, Limit, Outcome, evaluate


class LimiterError(Exception):
    """The shared limit store could not decide; the outage policy says what happens."""


def _ttl_ms(limit: Limit, now: float) -> int:
    """How long state must live: until a bucket is full again, or the window is over."""
    if limit.kind == "gcra":
        return math.ceil(limit.capacity * limit.interval * 1000) + 1000
    return math.ceil(max(0.0, limit.window_end - now) * 1000) + 60_000


class LocalLimits:
    """State in a dict: exact for one process. Decisions are synchronous, so atomic."""

    SWEEP_EVERY = 10_000

    def __init__(self) -> None:
        self._state: dict[str, float] = {}
        self._expires: dict[str, float] = {}
        self._decisions = 0

    async def decide(self, limits: Sequence[Limit], cost: int, now: float) -> Decision:
        decision, updates = evaluate(limits, self._state, cost, now)
        for limit in limits:
            if limit.key in updates:
                self._state[limit.key] = updates[limit.key]
                self._expires[limit.key] = now + _ttl_ms(limit, now) / 1000
        self._decisions += 1
        if self._decisions % self.SWEEP_EVERY == 0:
            self._sweep(now)
        return decision

    def export(self, now: float) -> dict[str, tuple[float, float]]:
        """The live state, key -> (value, expires at), to save across a restart."""
        return {
            key: (self._state[key], at)
            for key, at in self._expires.items()
            if at > now and key in self._state
        }

    def restore(self, saved: dict[str, tuple[float, float]]) -> None:
        for key, (value, at) in saved.items():
            self._state[key] = value
            self._expires[key] = at

    def _sweep(self, now: float) -> None:
        # Idle buckets are full and ended windows are over: their state means nothing now.
        for key in [k for k, at in self._expires.items() if at < now]:
            del self._expires[key]
            self._state.pop(key, None)


class RedisLimits:
    """State in Redis. Each request is one script call that decides all its limits at once;
    the calls of one event-loop tick go out together in one pipeline: one round trip.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._script = resources.files("gateway.ratelimit").joinpath("ratelimit.lua").read_text()
        self._sha = hashlib.sha1(self._script.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1
        self._queue: list[tuple[list[str], list[Any], asyncio.Future[list[bytes]]]] = []
        self.round_trips = 0  # pipelines sent: fewer than decisions when requests overlap

    async def decide(self, limits: Sequence[Limit], cost: int, now: float) -> Decision:
        keys = [limit.key for limit in limits]
        args: list[Any] = [f"{now:.6f}", cost]
        for limit in limits:
            if limit.kind == "gcra":
                args += ["g", limit.capacity, f"{limit.interval:.9f}", _ttl_ms(limit, now)]
            else:
                args += ["w", limit.capacity, f"{limit.window_end:.6f}", _ttl_ms(limit, now)]
        future: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()
        self._queue.append((keys, args, future))
        if len(self._queue) == 1:
            asyncio.get_running_loop().call_soon(self._flush)
        raw = await future
        outcomes = tuple(
            Outcome(
                policy=limit.policy,
                allowed=raw[1 + i * 4] == b"1",
                limit=limit.capacity,
                window=limit.window,
                remaining=int(float(raw[2 + i * 4])),
                reset=float(raw[3 + i * 4]),
                retry_after=float(raw[4 + i * 4]),
            )
            for i, limit in enumerate(limits)
        )
        return Decision(raw[0] == b"1", outcomes)

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        task = asyncio.ensure_future(self._send(batch))
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _send(
        self, batch: list[tuple[list[str], list[Any], asyncio.Future[list[bytes]]]]
    ) -> None:
        self.round_trips += 1
        try:
            results = await self._pipeline(batch)
            if any(isinstance(r, NoScriptError) for r in results):
                # Redis restarted or flushed its scripts: load ours and send the batch again.
                await self._client.script_load(self._script)
                results = await self._pipeline(batch)
        except (RedisError, OSError) as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(LimiterError(str(exc)))
            return
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(LimiterError(str(result)))
            else:
                future.set_result(result)

    async def _pipeline(
        self, batch: list[tuple[list[str], list[Any], asyncio.Future[list[bytes]]]]
    ) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            for keys, args, _ in batch:
                pipe.evalsha(self._sha, len(keys), *keys, *args)
            return await pipe.execute(raise_on_error=False)
