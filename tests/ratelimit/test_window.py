"""Sliding windows, below HTTP: exact on every store, one answer from Python and Lua, bounded."""

from __future__ import annotations

import random

import pytest
import redis.asyncio as aioredis

from gateway.config import RateLimitConfig
from gateway.ratelimit.backends import LocalLimits, RedisLimits
from gateway.ratelimit.plan_limits import bucket
from gateway.ratelimit.policy import US, Limit
from gateway.ratelimit.window import GRANULES, SlidingWindow
from gateway.store import Store
from tests.conftest import RedisServer, raw_redis, unique_prefix

START = int(1767225600.3 * US)  # not on a sub-bucket boundary


def window(requests: int, per: float, prefix: str = "t", subject: str = "k") -> Limit:
    config = RateLimitConfig(requests=requests, per=per, algorithm="sliding_window")
    return bucket("key", f"{prefix}:rl:{{org_x}}:key:{subject}", config)


@pytest.fixture
async def limits(store: Store) -> LocalLimits | RedisLimits:
    """The counters requests use on each store: in the process, on Redis, on a cluster."""
    shared = store.shared_limits()
    return LocalLimits() if shared is None else RedisLimits(shared)


def most_in_any_window(admitted: list[tuple[int, int]], per_us: int) -> int:
    """The most units admitted in any interval [s, s + per) (one starting at an admission
    holds the most)."""
    return max(
        sum(cost for at, cost in admitted if start <= at < start + per_us) for start, _ in admitted
    )


def strict_wait(admitted: list[tuple[int, int]], cost: int, n: int, now: int, per_us: int) -> int:
    """The least wait after which ``cost`` more keeps every interval of ``per`` within n."""
    units = sorted(at for at, count in admitted if at > now - per_us for _ in range(count))
    need = len(units) + cost - n
    return units[need - 1] + per_us - now if need > 0 else 0


async def test_no_interval_of_per_ever_holds_more_than_requests(
    limits: LocalLimits | RedisLimits,
) -> None:
    """Random arrivals with random costs against 7 per 10 s: no interval of 10 s holds more
    than 7 units; every refusal's retry_after is the moment the request fits (a microsecond
    earlier it is still refused), at most one sub-bucket after the oldest counted units
    leave the window."""
    limit = window(7, 10.0, unique_prefix())
    per, granule = limit.per_us, limit.granule_us
    assert granule == per // GRANULES
    rng = random.Random(7)  # noqa: S311 - a repeatable sequence, no secret
    now, admitted, refusals = START, [], 0
    for _ in range(400):
        now += rng.choice([0, 1, 7_777, granule, 333_333, 1_234_567, 4 * US])
        cost = rng.choice([1, 1, 1, 2, 3])
        decision = await limits.decide([limit], cost, now)
        if decision.allowed:
            admitted.append((now, cost))
            continue
        refusals += 1
        wait = round(decision.outcomes[0].retry_after * US)
        least = strict_wait(admitted, cost, 7, now, per)
        assert least <= wait < least + granule
        assert not (await limits.decide([limit], cost, now + wait - 1)).allowed
        now += wait
        assert (await limits.decide([limit], cost, now)).allowed
        admitted.append((now, cost))
    assert refusals > 50  # the limit was really tested
    assert most_in_any_window(admitted, per) <= 7
    # Spread over time, the promise is also the most: some interval holds all 7.
    assert most_in_any_window(admitted, per) == 7


async def test_what_the_window_reports_as_it_fills_and_drains(
    limits: LocalLimits | RedisLimits,
) -> None:
    limit = window(3, 60.0, unique_prefix())  # sub-buckets of 60 ms
    start = 1767225600 * US  # on a sub-bucket boundary
    reports = []
    for at, cost in ((0, 1), (12, 2), (24, 1), (59.94, 1), (60, 1), (60, 0)):
        decision = await limits.decide([limit], cost, start + round(at * US))
        (o,) = decision.outcomes
        reports.append((o.allowed, o.remaining, o.reset, o.retry_after))
    assert reports == [
        (True, 2, 60.0, 0.0),
        (True, 0, 60.0, 0.0),
        (False, 0, 48.0, 36.0),  # refused: the first unit leaves at 60 s
        (False, 0, 12.06, 0.06),
        (True, 0, 60.0, 0.0),  # the first unit has left; this one took its place
        (True, 0, 60.0, 0.0),  # a cost-0 look counts nothing
    ]
    assert limit.window == 60.0


@pytest.mark.parametrize(("requests", "per"), [(5, 1.0), (17, 1.0), (100, 60.0), (3, 0.0005)])
async def test_local_and_redis_decide_sliding_windows_identically(
    redis_server: RedisServer, requests: int, per: float
) -> None:
    """policy.py/window.py and ratelimit.lua are one algorithm: the same sequences of requests
    (costs, looks at cost 0, a clock that steps back as another instance's would), decided
    together with a token bucket and a calendar window, get the same answers."""
    prefix = unique_prefix()
    limit = window(requests, per, prefix)
    gcra = bucket("key", f"{prefix}:rl:{{org_x}}:key:g", RateLimitConfig(requests=4, per=per))
    end = START + 3600 * US
    quota = Limit(
        "quota",
        f"{prefix}:rl:{{org_x}}:quota:d",
        "window",
        requests * 6,
        window_start_us=end - 86400 * US,
        window_end_us=end,
    )
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        local, shared = LocalLimits(), RedisLimits(client)
        rng = random.Random(requests)  # noqa: S311 - a repeatable sequence, no secret
        now, step = START, limit.per_us // 7
        for _ in range(400):
            now += rng.choice([0, 1, limit.granule_us, step, step * 3, -step // 2])
            cost = rng.choice([0, 1, 1, 1, 2])
            for wanted in ([limit], [limit, gcra], [limit, quota]):
                mine = await local.decide(wanted, cost, now)
                theirs = await shared.decide(wanted, cost, now)
                assert mine == theirs
    finally:
        await client.aclose()


async def test_memory_stays_bounded_for_a_huge_limit(redis_server: RedisServer) -> None:
    """A billion a second, a request every sub-bucket and a bit, for three windows: about a
    thousand sub-buckets are kept, in the process and in Redis, not one entry per request."""
    prefix = unique_prefix()
    limit = window(10**9, 1.0, prefix)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        local, shared = LocalLimits(), RedisLimits(client)
        local.SWEEP_EVERY = GRANULES  # never saved, like the outage fallback: rows are swept
        now = START
        for _ in range(3 * GRANULES):
            now += limit.granule_us + 7
            assert (await local.decide([limit], 3, now)).allowed
            assert (await shared.decide([limit], 3, now)).allowed
        rows = local.export_changes()
        assert len(rows) <= GRANULES + 1  # the sub-buckets that still count, and no more
        fresh = LocalLimits()  # what a restart would load
        fresh.restore(rows)
        held = fresh._state[limit.key]
        assert isinstance(held, SlidingWindow)
        assert GRANULES - 10 <= len(held.buckets) <= GRANULES + 1
        fields = await client.hlen(limit.key)
        assert fields <= 2 * (GRANULES + 1) + 3
        assert int(await client.hget(limit.key, "n") or 0) == 3 * len(held.buckets)
        ttl = await client.pttl(limit.key)
        assert 60_000 < ttl <= 1001 + 60_000  # gone once nothing in it can count, and a margin
    finally:
        await client.aclose()


async def test_a_restored_window_decides_as_the_one_that_was_saved() -> None:
    """What a local gateway saves and loads at a restart is the whole window: the restored
    limits give the same answers as the ones that kept running."""
    limit = window(5, 60.0)
    running = LocalLimits()
    rng = random.Random(5)  # noqa: S311 - a repeatable sequence, no secret
    now = START
    saved: dict[str, tuple[int, int]] = {}
    for _ in range(40):
        now += rng.choice([1, US, 7 * US, 20 * US])
        await running.decide([limit], 1, now)
        saved.update(running.export_changes())
    # The store keeps what has not expired at the restart.
    restored = LocalLimits()
    restored.restore({key: kept for key, kept in saved.items() if kept[1] > now})
    for _ in range(40):
        now += rng.choice([1, US, 7 * US, 20 * US])
        assert await restored.decide([limit], 1, now) == await running.decide([limit], 1, now)


async def test_switching_algorithm_never_reads_the_other_state(redis_server: RedisServer) -> None:
    """A limit moved from a token bucket to a sliding window (and back) starts afresh: its
    state lives under another key, so neither reads the other's."""
    prefix = unique_prefix()
    key = f"{prefix}:rl:{{org_x}}:key:k"
    token = bucket("key", key, RateLimitConfig(requests=2, per=60))
    sliding = bucket("key", key, RateLimitConfig(requests=2, per=60, algorithm="sliding_window"))
    assert token.key != sliding.key
    store = {"backend": "redis", "url": redis_server.url}
    client = aioredis.Redis.from_url(store["url"])
    try:
        for limits in (LocalLimits(), RedisLimits(client)):
            for limit in (token, sliding):
                answers = [(await limits.decide([limit], 1, START)).allowed for _ in range(3)]
                assert answers == [True, True, False]
    finally:
        await client.aclose()
    sync = raw_redis(store)
    try:
        assert sync.type(sliding.key) == b"hash"
        assert sync.type(token.key) == b"string"
    finally:
        sync.close()
