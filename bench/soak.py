"""Soak a gateway for minutes under steady load and churn, and judge whether it stays flat.

One gateway process (the Redis store on a private redis-server when one is installed, else the
local store) in front of bench/upstream.py, everything on 127.0.0.1. For --duration seconds:

- requests at a fixed rate on an open-loop schedule (a slow answer does not slow the sender):
  GETs, and every tenth a POST with a fresh Idempotency-Key, spread over a small pool of keys;
- key churn: --churn keys created and as many revoked per second through the admin API (the
  pool rotates; each revoked key is tried once more a second later and must be refused);
- a config reload every --reload-every seconds, the file changed each time, by
  POST /admin/reload and SIGHUP in turn;
- webhook events published at --events-rate to an endpoint on a receiver in this process,
  which also gets the gateway's own key.created and key.revoked events;
- every --sample-every seconds: the gateway's resident memory and open fds, and the p99 and
  errors of the requests of that interval.

At the end it judges flatness (RSS slope over the second half, fds, errors, deliveries, reloads,
revocations), prints a markdown report, appends it to bench/RESULTS.md for full-length runs,
and exits 1 if anything grew or failed.
"""

# Over 400 lines: one script on purpose, so the load, the churn, the reloads and the verdict are
# read in one place; shared pieces (load generators, upstream) are modules beside it.

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

# Run as a script (`python bench/soak.py`), so bench/ is on sys.path and its siblings import.
from harness import (
    BENCH,
    BenchError,
    Child,
    Processes,
    _raise_on_sigterm,
    free_port,
    markdown_table,
    nproc,
    start_redis,
    wait_for_port,
)
from loadgen import percentile
from run import gateway_problems, start_upstream
from webhooks import Receiver

ORG = "soak"
PLAN = "soak"
EVENT_TYPE = "soak.event"
KEY_EVENTS = ("key.created", "key.revoked")
LIMIT = {"requests": 100_000, "per": "1m"}
FULL_LENGTH = 600  # seconds: shorter runs are trials, never recorded
RESULTS = BENCH / "RESULTS.md"
# Bounds on everything that waits, so a wedged gateway fails the run instead of hanging it.
REQUEST_TIMEOUT = 5.0
MAX_IN_FLIGHT = 500  # beyond this the schedule's requests are counted as dropped, not queued
# Keep-alive connections to each listener, all opened before the baseline: the gateway's open
# fds then measure what it holds itself, not how many connections a latency spike made us open.
CONNECTIONS = 8
ARRIVAL_TIMEOUT = 30.0  # after the load, for deliveries still on their way
REVOCATION_DEADLINE = 1.0  # the contract: a revoked key stops working within a second
RELOAD_DEADLINE = 10.0  # for a SIGHUP reload to show in /readyz
FD_SLACK = 4  # a connection or two of the store's pool, of webhook deliveries, coming and going
MAX_TABLE_ROWS = 20


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the load began
    rss_kb: int
    fds: int
    requests: int  # answered in the interval
    p99_ms: float
    errors: int  # in the interval: 5xx, other unexpected answers, failures, dropped
    keys_created: int  # so far
    published: int  # events accepted so far
    arrived: int  # of those, arrived so far


class Key:
    """A key of the pool, and the requests that use it now (it is revoked once they end)."""

    def __init__(self, key_id: str, secret: str) -> None:
        self.id = key_id
        self.secret = secret
        self._in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def used(self) -> None:
        self._in_flight += 1
        self.idle.clear()

    def done(self) -> None:
        self._in_flight -= 1
        if not self._in_flight:
            self.idle.set()


@dataclass
class Tally:
    """What the load saw; the interval lists are handed over and reset at each sample."""

    latencies: list[float] = field(default_factory=list)  # the whole run, seconds
    interval: list[float] = field(default_factory=list)
    interval_errors: int = 0
    statuses: Counter[str] = field(default_factory=Counter)  # unexpected answers, by status
    failures: Counter[str] = field(default_factory=Counter)  # no answer, by exception
    dropped: int = 0
    admin_errors: Counter[str] = field(default_factory=Counter)
    keys_created: int = 0
    keys_revoked: int = 0
    revoked_accepted: int = 0  # a revoked key that still worked after REVOCATION_DEADLINE
    reloads_ok: int = 0
    reloads_failed: list[str] = field(default_factory=list)
    published: dict[str, float] = field(default_factory=dict)  # event id -> when

    def error(self, counter: Counter[str], what: str) -> None:
        counter[what] += 1
        self.interval_errors += 1


class TypedReceiver(Receiver):
    """The webhook bench's receiver, noting each delivery's event type as well."""

    def __init__(self) -> None:
        super().__init__()
        self._types: dict[str, str] = {}  # webhook-id -> type, written by the receiver thread
        self._lock = threading.Lock()

    async def _handle(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        body = await request.read()
        event_id = request.headers.get("webhook-id", "")
        event_type = ""
        with contextlib.suppress(ValueError, AttributeError):
            event_type = str(json.loads(body).get("type"))
        with self._lock:
            self._types[event_id] = event_type
            self.arrivals.append((arrived, event_id))
        return web.Response(status=204)

    def arrived(self) -> dict[str, str]:
        """Every distinct event id that arrived so far, with its type."""
        with self._lock:
            return dict(self._types)


# ---------------------------------------------------------------------------------------------
# The gateway under test.


@dataclass
class Gateway:
    child: Child
    config: Path
    port: int
    admin_port: int
    token: str
    stdout: Path
    store: str
    helpers: tuple[Child, ...]
    body: dict[str, object]  # the config, rewritten before each reload
    plan: dict[str, object]  # the soak plan inside it, whose description each reload changes

    @property
    def pid(self) -> int:
        return self.child.proc.pid


def plan_config() -> dict[str, object]:
    # Every kind of limit, none of which refuses at the soak's rates: each request is counted by
    # all of them, and their state expires as a real plan's would (minutes, not days).
    return {
        "description": "soak",
        "rate_limit": LIMIT,
        "org_rate_limit": LIMIT,
        "quota": {"requests": 1_000_000_000, "per": "month"},
    }


def gateway_config(
    port: int,
    admin_port: int,
    token: str,
    upstream_port: int,
    store: dict[str, object],
    plan: dict[str, object],
) -> dict[str, object]:
    route_limit = {"name": "soak", "scope": "key", **LIMIT}
    return {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin_port, "token": token},
        "workers": 1,
        "store": store,
        "server": {"drain_timeout": 2},
        # The access log on, as in production; stdout goes to a file read at the end.
        "log": {"level": "info", "format": "json", "access_log": True},
        "plans": {PLAN: plan},
        "upstreams": {"up": {"targets": [f"http://127.0.0.1:{upstream_port}"]}},
        "routes": [
            {
                "path": "/soak/{rest:.*}",
                "name": "/soak/*:read",
                "upstream": "up",
                "methods": ["GET"],
                "scopes": ["read"],
                "rate_limits": [route_limit],
            },
            {
                "path": "/soak/{rest:.*}",
                "name": "/soak/*:write",
                "upstream": "up",
                "methods": ["POST"],
                "scopes": ["write"],
                "idempotency": "optional",
            },
        ],
        "webhooks": {"allow_private_targets": True, "poll_interval": "100ms"},
    }


def start_gateway(procs: Processes, store_choice: str) -> Gateway:
    helpers: list[Child] = []
    store: dict[str, object]
    if store_choice == "redis":
        redis_url, redis = start_redis(procs)
        helpers.append(redis)
        store = {"backend": "redis", "url": redis_url, "key_prefix": "soak"}
    else:
        store = {"backend": "local", "path": str(procs.workdir / "soak-state.db")}
    upstream_port, upstream = start_upstream(procs, "builtin")
    helpers.append(upstream)
    port, admin_port, token = free_port(), free_port(), secrets.token_urlsafe(24)
    plan = plan_config()
    body = gateway_config(port, admin_port, token, upstream_port, store, plan)
    config = procs.workdir / "soak.yaml"
    config.write_text(yaml.safe_dump(body, sort_keys=False))
    stdout = procs.workdir / "gateway.stdout"
    argv = [sys.executable, "-m", "gateway", "run", "-c", str(config)]
    child = procs.start("gateway", argv, stdout=stdout)
    wait_for_port(child, port)
    wait_for_port(child, admin_port)
    return Gateway(
        child, config, port, admin_port, token, stdout, store_choice, tuple(helpers), body, plan
    )


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS in /proc/{pid}/status")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# ---------------------------------------------------------------------------------------------
# The load: every activity is a task on one event loop, each on its own fixed schedule.


class Soak:
    def __init__(self, args: argparse.Namespace, gateway: Gateway, receiver: TypedReceiver):
        self.args = args
        self.gateway = gateway
        self.receiver = receiver
        self.tally = Tally()
        self.samples: list[Sample] = []
        self.pool: list[Key] = []
        self.background: set[asyncio.Task[None]] = set()
        self.base = f"http://127.0.0.1:{gateway.port}"
        self.admin = f"http://127.0.0.1:{gateway.admin_port}"
        self.admin_headers = {"Authorization": f"Bearer {gateway.token}"}
        self.began = 0.0  # time.monotonic() when the load began
        self.start = self.until = 0.0  # the event loop's time: when the load began and ends

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _admin(
        self, session: aiohttp.ClientSession, path: str, body: object, expect: int
    ) -> dict[str, object] | None:
        """POST to the admin API; the answer's data, or None (the failure is counted)."""
        try:
            async with session.post(
                self.admin + path, json=body, headers=self.admin_headers
            ) as answer:
                raw = await answer.read()
                status = answer.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.tally.error(self.tally.admin_errors, f"POST {path}: {type(exc).__name__}")
            return None
        if status != expect:
            what = f"POST {path.split('/')[2]}: {status} {raw[:120]!r}"
            self.tally.error(self.tally.admin_errors, what)
            return None
        try:
            data = json.loads(raw)["data"]
        except (ValueError, KeyError, TypeError):
            data = None
        if not isinstance(data, dict):
            self.tally.error(self.tally.admin_errors, f"POST {path}: no data in the answer")
            return None
        return data

    async def setup(self, session: aiohttp.ClientSession) -> None:
        org = {"slug": ORG, "name": "Soak", "plan": PLAN}
        endpoint = {"url": self.receiver.url, "events": [EVENT_TYPE, *KEY_EVENTS]}
        if await self._admin(session, "/admin/orgs", org, 201) is None or (
            await self._admin(session, f"/admin/orgs/{ORG}/webhooks", endpoint, 201) is None
        ):
            raise BenchError(f"could not set up the org and webhook: {self.tally.admin_errors}")
        for _ in range(self.args.keys):
            key = await self._create_key(session)
            if key is None:
                raise BenchError(f"could not create keys: {self.tally.admin_errors}")
            self.pool.append(key)

    async def _create_key(self, session: aiohttp.ClientSession) -> Key | None:
        body = {"name": "soak", "scopes": ["read", "write"]}
        data = await self._admin(session, f"/admin/orgs/{ORG}/keys", body, 201)
        if data is None:
            return None
        self.tally.keys_created += 1
        return Key(str(data["id"]), str(data["secret"]))

    # -- requests ------------------------------------------------------------------------------

    async def _ticks(self, interval: float, first: float = 0.0) -> AsyncIterator[tuple[int, float]]:
        """(1, when), (2, when)...: one every ``interval`` seconds from ``first`` after the
        start, on a fixed schedule (a late tick does not move the next), until the end."""
        loop = asyncio.get_running_loop()
        n = 0
        while (due := self.start + first + n * interval) <= self.until + 1e-6:
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            n += 1
            yield n, due

    async def load(self, session: aiohttp.ClientSession) -> None:
        in_flight: set[asyncio.Task[None]] = set()
        async for n, due in self._ticks(1.0 / self.args.rate):
            if len(in_flight) >= MAX_IN_FLIGHT:
                self.tally.dropped += 1
                self.tally.interval_errors += 1
                continue
            task = asyncio.create_task(self._request(session, n, due))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight)

    async def warm(self, session: aiohttp.ClientSession) -> None:
        """One request outside the tally, so every connection exists before the baseline."""
        headers = {"Authorization": f"Bearer {self.pool[0].secret}"}
        try:
            async with session.get(f"{self.base}/soak/warm", headers=headers) as answer:
                await answer.read()
                status = answer.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BenchError(f"warm-up request failed: {exc!r}") from None
        if status != 200:
            raise BenchError(f"warm-up request got {status}, not 200")

    async def _request(self, session: aiohttp.ClientSession, n: int, due: float) -> None:
        key = self.pool[n % len(self.pool)]
        key.used()
        headers = {"Authorization": f"Bearer {key.secret}"}
        method, expect = "GET", 200
        if n % 10 == 0:
            method = "POST"
            headers["Idempotency-Key"] = f"soak-{n}-{secrets.token_hex(4)}"
        try:
            async with session.request(
                method, f"{self.base}/soak/{n % 100}", headers=headers
            ) as answer:
                await answer.read()
                status = answer.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.tally.error(self.tally.failures, type(exc).__name__)
            return
        finally:
            key.done()
        # From the scheduled time: a request that could not leave on time was slow too.
        latency = asyncio.get_running_loop().time() - due
        self.tally.latencies.append(latency)
        self.tally.interval.append(latency)
        if status != expect:
            self.tally.error(self.tally.statuses, str(status))

    # -- key churn -----------------------------------------------------------------------------

    async def churn(self, session: aiohttp.ClientSession) -> None:
        async for _ in self._ticks(1.0 / self.args.churn, first=1.0 / self.args.churn):
            key = await self._create_key(session)
            if key is None:
                continue
            self.pool.append(key)
            retired = self.pool.pop(0)
            self._spawn(self._revoke(session, retired))

    async def _revoke(self, session: aiohttp.ClientSession, key: Key) -> None:
        # Requests already sent with the key finish first: a 401 to them would be expected.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(key.idle.wait(), REQUEST_TIMEOUT)
        if await self._admin(session, f"/admin/keys/{key.id}/revoke", {}, 200) is None:
            return
        self.tally.keys_revoked += 1
        await asyncio.sleep(REVOCATION_DEADLINE)
        headers = {"Authorization": f"Bearer {key.secret}"}
        try:
            async with session.get(f"{self.base}/soak/revoked", headers=headers) as answer:
                await answer.read()
                status = answer.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.tally.error(self.tally.failures, f"revoked-key probe: {type(exc).__name__}")
            return
        if status != 401:
            self.tally.revoked_accepted += 1
            self.tally.interval_errors += 1

    # -- webhook events ------------------------------------------------------------------------

    async def events(self, session: aiohttp.ClientSession) -> None:
        if self.args.events_rate <= 0:
            return
        async for n, _ in self._ticks(1.0 / self.args.events_rate):
            body = {"org": ORG, "type": EVENT_TYPE, "data": {"n": n}}
            sent = time.monotonic()
            data = await self._admin(session, "/admin/events", body, 202)
            if data is not None and isinstance(data.get("id"), str):
                self.tally.published[str(data["id"])] = sent

    # -- reloads -------------------------------------------------------------------------------

    async def reloads(self, session: aiohttp.ClientSession) -> None:
        if self.args.reload_every <= 0:
            return
        every = self.args.reload_every
        async for n, _ in self._ticks(every, first=every):
            # A changed file each time: a new config hash, a new snapshot of every route.
            self.gateway.plan["description"] = f"soak, reload {n}"
            self.gateway.config.write_text(yaml.safe_dump(self.gateway.body, sort_keys=False))
            problem = await (self._sighup(session) if n % 2 else self._post_reload(session))
            if problem is None:
                self.tally.reloads_ok += 1
            else:
                self.tally.reloads_failed.append(f"reload {n}: {problem}")
                self.tally.interval_errors += 1

    async def _post_reload(self, session: aiohttp.ClientSession) -> str | None:
        try:
            async with session.post(
                f"{self.admin}/admin/reload", headers=self.admin_headers
            ) as answer:
                raw = await answer.read()
                return None if answer.status == 200 else f"{answer.status} {raw[:200]!r}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"POST /admin/reload: {type(exc).__name__}"

    async def _sighup(self, session: aiohttp.ClientSession) -> str | None:
        before = await self._config_hash(session)
        os.kill(self.gateway.pid, signal.SIGHUP)
        deadline = asyncio.get_running_loop().time() + RELOAD_DEADLINE
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
            after = await self._config_hash(session)
            if after is not None and after != before:
                return None
        return f"SIGHUP: the config hash in /readyz did not change in {RELOAD_DEADLINE:g} s"

    async def _config_hash(self, session: aiohttp.ClientSession) -> str | None:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with session.get(f"{self.admin}/readyz") as answer:
                data = (await answer.json()).get("data")
                value = data.get("config_hash") if isinstance(data, dict) else None
                return value if isinstance(value, str) else None
        return None

    # -- samples -------------------------------------------------------------------------------

    async def sampler(self) -> None:
        every = self.args.sample_every
        async for _ in self._ticks(every, first=every):
            self.take_sample()

    def take_sample(self) -> None:
        for child in (self.gateway.child, *self.gateway.helpers):
            if child.proc.poll() is not None:
                raise BenchError(child.describe_exit())
        pid = self.gateway.pid
        interval, self.tally.interval = sorted(self.tally.interval), []
        errors, self.tally.interval_errors = self.tally.interval_errors, 0
        published = set(self.tally.published)
        arrived = len(published.intersection(self.receiver.arrived()))
        sample = Sample(
            at=time.monotonic() - self.began,
            rss_kb=rss_kb(pid),
            fds=open_fds(pid),
            requests=len(interval),
            p99_ms=percentile(interval, 99) * 1000,
            errors=errors,
            keys_created=self.tally.keys_created,
            published=len(published),
            arrived=arrived,
        )
        self.samples.append(sample)
        print(
            f"soak: {sample.at:5.0f} s  rss {sample.rss_kb / 1024:7.1f} MiB  fds {sample.fds:3d}"
            f"  {sample.requests:5d} requests  p99 {sample.p99_ms:7.1f} ms"
            f"  errors {sample.errors}  events {sample.arrived}/{sample.published}",
            file=sys.stderr,
            flush=True,
        )

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=CONNECTIONS)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            await self.setup(session)
            for _ in range(3):
                await asyncio.gather(*(self.warm(session) for _ in range(CONNECTIONS)))
            self.began = time.monotonic()
            self.start = asyncio.get_running_loop().time()
            self.until = self.start + self.args.duration
            self.take_sample()  # the baseline, before any load
            await asyncio.gather(
                self.load(session),
                self.churn(session),
                self.events(session),
                self.reloads(session),
                self.sampler(),
            )
            if self.background:  # the last revocations and their probes
                await asyncio.wait(self.background, timeout=REQUEST_TIMEOUT + 2)
            await self.wait_for_arrivals()

    async def wait_for_arrivals(self) -> None:
        deadline = time.monotonic() + ARRIVAL_TIMEOUT
        while time.monotonic() < deadline:
            if not self.missing_events() and not self.missing_key_events():
                return
            await asyncio.sleep(0.2)

    def missing_events(self) -> int:
        return len(set(self.tally.published).difference(self.receiver.arrived()))

    def missing_key_events(self) -> dict[str, int]:
        """Key events not arrived, by type (every key was made after the endpoint was)."""
        arrived = Counter(self.receiver.arrived().values())
        expected = {"key.created": self.tally.keys_created, "key.revoked": self.tally.keys_revoked}
        return {t: n - arrived[t] for t, n in expected.items() if n > arrived[t]}


# ---------------------------------------------------------------------------------------------
# The verdict and the report.


def slope_per_second(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x; 0.0 with fewer than two distinct x."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var


@dataclass(frozen=True)
class Check:
    name: str
    value: str
    limit: str
    ok: bool


def judge(soak: Soak, args: argparse.Namespace, problems: Sequence[str]) -> list[Check]:
    samples, tally = soak.samples, soak.tally
    half = args.duration / 2
    second = [s for s in samples if s.at >= half]
    first = [s for s in samples if s.at < half]
    slope = slope_per_second([(s.at, s.rss_kb) for s in second])
    fd_first = max((s.fds for s in first), default=0)
    fd_last = max((s.fds for s in second), default=0)
    server_errors = sum(n for status, n in tally.statuses.items() if status.startswith("5"))
    other = sum(tally.statuses.values()) - server_errors
    missing_keys = soak.missing_key_events()
    logged_errors = [p for p in problems if " error " in f" {p} " or " critical " in f" {p} "]
    return [
        Check(
            "RSS slope, second half",
            f"{slope:+.2f} KB/s",
            f"< {args.max_rss_slope:g} KB/s",
            slope < args.max_rss_slope,
        ),
        Check(
            "open fds, second half (max)",
            str(fd_last),
            f"<= {fd_first + FD_SLACK}",
            fd_last <= fd_first + FD_SLACK,
        ),
        Check("5xx answers", f"{server_errors:,}", "0", server_errors == 0),
        Check("other unexpected answers", f"{other:,}", "0", other == 0),
        Check(
            "requests without an answer or dropped",
            f"{sum(tally.failures.values()) + tally.dropped:,}",
            "0",
            not tally.failures and not tally.dropped,
        ),
        Check(
            "admin API failures",
            f"{sum(tally.admin_errors.values()):,}",
            "0",
            not tally.admin_errors,
        ),
        Check(
            "revoked keys still accepted after 1 s",
            f"{tally.revoked_accepted:,} of {tally.keys_revoked:,}",
            "0",
            tally.revoked_accepted == 0,
        ),
        Check(
            "reloads failed",
            f"{len(tally.reloads_failed)} of {len(tally.reloads_failed) + tally.reloads_ok}",
            "0",
            not tally.reloads_failed,
        ),
        Check(
            "webhook events not delivered",
            f"{soak.missing_events():,} of {len(tally.published):,}",
            "0",
            soak.missing_events() == 0 and bool(tally.published or args.events_rate <= 0),
        ),
        Check(
            "key events not delivered",
            ", ".join(f"{t} {n}" for t, n in missing_keys.items()) or "0",
            "0",
            not missing_keys,
        ),
        Check("errors logged by the gateway", str(len(logged_errors)), "0", not logged_errors),
    ]


def render(
    soak: Soak, args: argparse.Namespace, checks: Sequence[Check], notes: Sequence[str]
) -> str:
    samples = soak.samples
    step = max(1, -(-len(samples) // MAX_TABLE_ROWS))
    shown = samples[::step]
    if shown[-1] is not samples[-1]:
        shown.append(samples[-1])
    columns = [
        "t s",
        "RSS MiB",
        "fds",
        "requests",
        "p99 ms",
        "errors",
        "keys made",
        "events arrived",
    ]
    rows = [
        [
            f"{s.at:.0f}",
            f"{s.rss_kb / 1024:.1f}",
            str(s.fds),
            f"{s.requests:,}",
            f"{s.p99_ms:.1f}" if s.requests else "-",
            str(s.errors),
            f"{s.keys_created:,}",
            f"{s.arrived:,}/{s.published:,}",
        ]
        for s in shown
    ]
    latencies = sorted(soak.tally.latencies)
    flat = all(c.ok for c in checks)
    python = ".".join(str(v) for v in sys.version_info[:3])
    header = (
        f"**soak:** {args.duration} s at {args.rate:g} requests/s over {args.keys} keys,"
        f" {args.churn:g} key created and revoked per second, a reload every"
        f" {args.reload_every:g} s, {args.events_rate:g} webhook events/s · **store:**"
        f" {soak.gateway.store} · **nproc:** {nproc()} · **Python:** {python}"
    )
    out = [header, ""]
    if step > 1:
        out += [f"Every {step}th sample of {len(samples)} (the verdict uses all):", ""]
    out += markdown_table(columns, rows)
    out += [
        "",
        f"Requests: {len(latencies):,}, p50 {percentile(latencies, 50) * 1000:.1f} ms,"
        f" p99 {percentile(latencies, 99) * 1000:.1f} ms (from each request's scheduled time).",
        "",
        *markdown_table(
            ["check", "value", "limit", "ok"],
            [[c.name, c.value, c.limit, "yes" if c.ok else "NO"] for c in checks],
        ),
        "",
        f"Verdict: {'flat' if flat else 'NOT FLAT'}.",
    ]
    if notes:
        out += ["", *(f"- {note}" for note in notes)]
    return "\n".join(out) + "\n"


def details(tally: Tally) -> list[str]:
    notes = []
    for what, counter in (
        ("unexpected answers", tally.statuses),
        ("requests without an answer", tally.failures),
        ("admin API failures", tally.admin_errors),
    ):
        if counter:
            notes.append(f"{what}: " + ", ".join(f"{k} x{v}" for k, v in counter.most_common(5)))
    if tally.dropped:
        notes.append(f"{tally.dropped:,} scheduled requests dropped ({MAX_IN_FLIGHT} in flight)")
    notes += tally.reloads_failed[:5]
    return notes


# ---------------------------------------------------------------------------------------------
# Main.


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=FULL_LENGTH, help="seconds of load")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second")
    parser.add_argument("--keys", type=int, default=5, help="keys in the rotating pool")
    parser.add_argument("--churn", type=float, default=1.0, help="keys created+revoked per second")
    parser.add_argument("--reload-every", type=float, default=30.0, help="seconds; 0: none")
    parser.add_argument("--events-rate", type=float, default=5.0, help="events per second; 0: none")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument(
        "--store", choices=("auto", "redis", "local"), default="auto", help="auto: redis if found"
    )
    parser.add_argument(
        "--max-rss-slope", type=float, default=1.0, help="KB/s allowed over the second half"
    )
    parser.add_argument(
        "--no-record",
        action="store_true",
        help=f"never append to {RESULTS.relative_to(BENCH.parent)} (runs under"
        f" {FULL_LENGTH} s never are)",
    )
    args = parser.parse_args(argv)
    if args.duration < 4 * args.sample_every:
        parser.error("--duration must cover at least four samples (see --sample-every)")
    if min(args.rate, args.churn, args.sample_every) <= 0 or args.keys < 1:
        parser.error("--rate, --churn and --sample-every must be > 0, --keys >= 1")
    if args.events_rate < 0 or args.reload_every < 0:
        parser.error("--events-rate and --reload-every must be >= 0")
    if args.store == "auto":
        args.store = "redis" if shutil.which("redis-server") else "local"
    elif args.store == "redis" and not shutil.which("redis-server"):
        parser.error("--store redis: redis-server is not on PATH")
    if not Path("/proc/self/status").exists():
        parser.error("the soak reads /proc/<pid>: Linux only")
    return args


def soak(args: argparse.Namespace) -> tuple[str, bool]:
    """Run it; the report and whether everything stayed flat."""
    receiver = TypedReceiver()
    with (
        tempfile.TemporaryDirectory(prefix="gateway-soak-") as tmp,
        Processes(Path(tmp)) as procs,
        receiver,
    ):
        print(f"soak: {args.duration} s on the {args.store} store ...", file=sys.stderr)
        gateway = start_gateway(procs, args.store)
        run = Soak(args, gateway, receiver)
        asyncio.run(run.run())
        procs.stop(gateway.child.proc)
        notes = details(run.tally)
        code = gateway.child.proc.returncode
        if code not in (0, -signal.SIGTERM):
            notes.append(f"the gateway exited with status {code} when stopped with SIGTERM")
        problems = gateway_problems(gateway.stdout)
        notes += problems
        checks = judge(run, args, problems)
        return render(run, args, checks, notes), all(c.ok for c in checks)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        report, flat = soak(args)
    except BenchError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("soak: interrupted; all started processes were stopped", file=sys.stderr)
        return 130
    except SystemExit:
        print("soak: terminated; all started processes were stopped", file=sys.stderr)
        raise
    print(report, end="")
    command = shlex.join([".venv/bin/python", "bench/soak.py", *argv]) if argv else "make soak"
    if args.no_record or args.duration < FULL_LENGTH:
        print(f"soak: not recorded in {RESULTS.name} (a trial run)", file=sys.stderr)
    else:
        date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        with RESULTS.open("a", encoding="utf-8") as out:
            out.write(f"\n## {date}: soak\n\nCommand: `{command}`\n\n{report}")
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
