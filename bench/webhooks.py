"""Benchmark outbound webhook delivery: publish events through the admin API, time their arrival.

For each store backend (local SQLite, then a Redis the harness starts) one gateway delivers to
one endpoint subscribed to every event type, a receiver in this process (its own thread and
event loop, answering 204) notes when each `webhook-id` arrives, and the table gives the
publish rate, the delivery throughput and the publish-to-arrival latency.
"""

# Over 400 lines: one script on purpose, so both stores' runs and the receiver are read in one
# place; shared pieces are modules beside it.

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import math
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

# Run as a script (`python bench/webhooks.py`), so bench/ is on sys.path and its siblings import.
from harness import (
    START_TIMEOUT,
    STOP_TIMEOUT,
    BenchError,
    Child,
    Processes,
    _slug,
    free_port,
    markdown_table,
    nproc,
    reproduce,
    run_report,
    start_redis,
    wait_for_port,
)
from run import GatewaySetup, admin_post, gateway_problems

BACKENDS = ("local", "redis")
BENCH_PLAN = "bench"
BENCH_ORG = "whbench"
EVENT_TYPE = "bench.event"
POLL_INTERVAL = "100ms"
# Bounds on every wait, so a wedged gateway fails or shortens the run instead of hanging it.
PUBLISH_TIMEOUT = 10.0  # one POST /admin/events
SETTLE = 1.0  # after the last expected arrival, how long to keep counting late duplicates
_DELIVERIES_METRIC = re.compile(
    r'^gateway_webhook_deliveries_total\{result="([^"]+)"\}\s+([\d.e+]+)$', re.MULTILINE
)


# ---------------------------------------------------------------------------------------------
# The receiver: an aiohttp server on its own thread and event loop, so the publishers' work in
# the main loop does not sit between a delivery and its timestamp (both still share the GIL).


class Receiver:
    def __init__(self) -> None:
        # (monotonic time, webhook-id), appended by the receiver thread, read by the main one.
        self.arrivals: list[tuple[float, str]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        await request.read()
        self.arrivals.append((arrived, request.headers.get("webhook-id", "")))
        return web.Response(status=204)

    async def _start(self, sock: socket.socket) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    def __enter__(self) -> Receiver:
        # Bound here, so the port is ours before the gateway is told about it.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(sock), self._loop).result(START_TIMEOUT)
        except BaseException:
            sock.close()
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            cleanup = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
            with contextlib.suppress(Exception):
                cleanup.result(STOP_TIMEOUT)
            self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(STOP_TIMEOUT)
        if not self._thread.is_alive():
            self._loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


# ---------------------------------------------------------------------------------------------
# The gateway under test.


def webhook_gateway_config(
    workdir: Path, backend: str, setup: GatewaySetup, listen_port: int
) -> Path:
    store: dict[str, object]
    if backend == "redis":
        # Our own Redis, and still a prefix of this run's own.
        prefix = f"whbench-{secrets.token_hex(4)}"
        store = {"backend": "redis", "url": setup.redis_urls[0], "key_prefix": prefix}
    else:
        store = {"backend": "local", "path": str(workdir / f"webhooks-{backend}-state.db")}
    config: dict[str, object] = {
        "listen": {"host": "127.0.0.1", "port": listen_port},
        "admin": {
            "host": "127.0.0.1",
            "port": setup.admin_port,
            "token": setup.admin_token,
            "token_file": str(workdir / "admin-token"),
        },
        "workers": 1,
        "store": store,
        "server": {"drain_timeout": 2},
        # JSON, so run.py's gateway_problems can count the warnings and errors.
        "log": {"level": "warning", "format": "json", "access_log": False},
        "plans": {BENCH_PLAN: {}},
        "upstreams": {},
        "routes": [],
        # concurrency and per_endpoint_concurrency stay at their defaults.
        "webhooks": {"allow_private_targets": True, "poll_interval": POLL_INTERVAL},
    }
    path = workdir / f"webhooks-{backend}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass(frozen=True)
class Gateway:
    child: Child
    setup: GatewaySetup
    stdout: Path
    helpers: tuple[Child, ...]


def start_gateway(procs: Processes, backend: str) -> Gateway:
    name = f"gateway-webhooks-{backend}"
    helpers: list[Child] = []
    redis_urls: list[str] = []
    if backend == "redis":
        redis_url, redis = start_redis(procs)
        redis_urls, helpers = [redis_url], [redis]
    setup = GatewaySetup(
        admin_port=free_port(), admin_token=secrets.token_urlsafe(24), redis_urls=redis_urls
    )
    listen_port = free_port()
    config = webhook_gateway_config(procs.workdir, backend, setup, listen_port)
    stdout = procs.workdir / f"{_slug(name)}.stdout"
    argv = [sys.executable, "-m", "gateway", "run", "-c", str(config)]
    child = procs.start(name, argv, stdout=stdout)
    wait_for_port(child, listen_port)
    wait_for_port(child, setup.admin_port)
    return Gateway(child, setup, stdout, tuple(helpers))


def subscribe(name: str, setup: GatewaySetup, url: str) -> str:
    admin_post(name, setup, "/admin/orgs", {"slug": BENCH_ORG, "name": "Bench", "plan": BENCH_PLAN})
    endpoint = admin_post(
        name, setup, f"/admin/orgs/{BENCH_ORG}/webhooks", {"url": url, "events": ["*"]}
    )
    endpoint_id = endpoint.get("id") if isinstance(endpoint, dict) else None
    if not isinstance(endpoint_id, str):
        raise BenchError(f"{name}: the webhook creation answer has no data.id")
    return endpoint_id


def delivery_counts(setup: GatewaySetup) -> dict[str, int]:
    """gateway_webhook_deliveries_total by result, from the admin listener's /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", setup.admin_port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode(errors="replace")
    except OSError:
        return {}
    finally:
        conn.close()
    return {m.group(1): int(float(m.group(2))) for m in _DELIVERIES_METRIC.finditer(text)}


# ---------------------------------------------------------------------------------------------
# Load and measurement.


@dataclass(frozen=True)
class Result:
    backend: str
    events: int
    accepted: int
    publish_errors: Counter[str]
    publish_rate: float  # accepted / (last 202 - first send)
    delivered: int  # distinct published ids that arrived
    throughput: float  # delivered / (last arrival - first send)
    latencies_ms: list[float]  # per delivered event: first arrival - its publish was sent
    duplicates: int
    unexpected: int  # arrivals whose webhook-id we did not publish
    missing: int
    notes: tuple[str, ...]

    def percentile(self, q: float) -> float:
        # Nearest rank: a value that was measured, not an interpolation.
        values = sorted(self.latencies_ms)
        if not values:
            return math.nan
        return values[max(0, math.ceil(q / 100 * len(values)) - 1)]


async def publish_all(
    setup: GatewaySetup, events: int, clients: int
) -> tuple[dict[str, float], float, float, Counter[str]]:
    """POST /admin/events `events` times from `clients` tasks; send time by event id."""
    sent: dict[str, float] = {}
    errors: Counter[str] = Counter()
    answered: list[float] = []
    counter = iter(range(events))
    base = f"http://127.0.0.1:{setup.admin_port}"
    headers = {"Authorization": f"Bearer {setup.admin_token}"}
    timeout = aiohttp.ClientTimeout(total=PUBLISH_TIMEOUT)
    connector = aiohttp.TCPConnector(limit=clients)

    async def client(session: aiohttp.ClientSession) -> None:
        for n in counter:
            body = {"org": BENCH_ORG, "type": EVENT_TYPE, "data": {"n": n}}
            started = time.monotonic()
            try:
                async with session.post("/admin/events", json=body) as answer:
                    raw = await answer.read()
                    status = answer.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors[type(exc).__name__] += 1
                continue
            if status != 202:
                errors[f"{status} {raw[:80]!r}"] += 1
                continue
            try:
                event_id = _event_id(raw)
            except BenchError:
                errors["202 without data.id"] += 1
                continue
            sent[event_id] = started
            answered.append(time.monotonic())

    async with aiohttp.ClientSession(
        base, headers=headers, timeout=timeout, connector=connector
    ) as session:
        first = time.monotonic()
        await asyncio.gather(*(client(session) for _ in range(clients)))
    last = max(answered, default=first)
    return sent, first, last, errors


def _event_id(raw: bytes) -> str:
    try:
        value = json.loads(raw)["data"]["id"]
    except (ValueError, KeyError, TypeError):
        raise BenchError("no data.id") from None
    if not isinstance(value, str):
        raise BenchError("no data.id")
    return value


def wait_for_arrivals(
    receiver: Receiver, expected: set[str], gateway: Gateway, timeout: float
) -> None:
    """Until every expected id arrived, the gateway died, or `timeout` passed."""
    seen: set[str] = set()
    read = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        arrivals = receiver.arrivals
        for _, event_id in arrivals[read : len(arrivals)]:
            seen.add(event_id)
            read += 1
        if expected <= seen:
            return
        for child in (gateway.child, *gateway.helpers):
            if child.proc.poll() is not None:
                raise BenchError(child.describe_exit())
        time.sleep(0.05)


def measure(procs: Processes, backend: str, events: int, clients: int, timeout: float) -> Result:
    name = f"gateway-webhooks-{backend}"
    with Receiver() as receiver:
        gateway = start_gateway(procs, backend)
        try:
            subscribe(name, gateway.setup, receiver.url)
            sent, first, last_answer, errors = asyncio.run(
                publish_all(gateway.setup, events, clients)
            )
            publish_done = time.monotonic()
            wait_for_arrivals(receiver, set(sent), gateway, timeout)
            time.sleep(SETTLE)
            waited = time.monotonic() - publish_done
            counts = delivery_counts(gateway.setup)
        finally:
            for child in (gateway.child, *reversed(gateway.helpers)):
                procs.stop(child.proc)
        arrivals = list(receiver.arrivals)
    notes: list[str] = []
    code = gateway.child.proc.returncode
    if code not in (0, -signal.SIGTERM):
        notes.append(f"the gateway exited with status {code} when stopped with SIGTERM")
    first_arrival: dict[str, float] = {}
    per_id: Counter[str] = Counter()
    unexpected = 0
    for at, event_id in arrivals:
        if event_id not in sent:
            unexpected += 1
            continue
        per_id[event_id] += 1
        first_arrival.setdefault(event_id, at)
    delivered = len(first_arrival)
    missing = len(sent) - delivered
    last_arrival = max(first_arrival.values(), default=first)
    if missing:
        notes.append(
            f"{missing:,} of {len(sent):,} events had not arrived {waited:.0f} s after the"
            " last publish"
        )
    if counts:
        detail = ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))
        notes.append(f"gateway_webhook_deliveries_total: {detail}")
    notes.extend(gateway_problems(gateway.stdout))
    return Result(
        backend=backend,
        events=events,
        accepted=len(sent),
        publish_errors=errors,
        publish_rate=len(sent) / (last_answer - first) if last_answer > first else 0.0,
        delivered=delivered,
        throughput=delivered / (last_arrival - first) if last_arrival > first else 0.0,
        latencies_ms=[(first_arrival[i] - sent[i]) * 1000 for i in first_arrival],
        duplicates=sum(n - 1 for n in per_id.values()),
        unexpected=unexpected,
        missing=missing,
        notes=tuple(notes),
    )


# ---------------------------------------------------------------------------------------------
# Report.


def render(results: Sequence[Result], header: str) -> str:
    columns = [
        "store",
        "events",
        "published/s",
        "delivered/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "duplicates",
        "missing",
    ]
    table = [
        [
            r.backend,
            f"{r.accepted:,}",
            f"{r.publish_rate:,.0f}",
            f"{r.throughput:,.0f}",
            f"{r.percentile(50):,.1f}",
            f"{r.percentile(95):,.1f}",
            f"{r.percentile(99):,.1f}",
            f"{r.duplicates:,}",
            f"{r.missing:,}",
        ]
        for r in results
    ]
    out = [header, "", *markdown_table(columns, table)]
    by_backend = {r.backend: r for r in results}
    local, redis = by_backend.get("local"), by_backend.get("redis")
    if local is not None and redis is not None and local.throughput > 0:
        ratio = redis.throughput / local.throughput
        out += ["", f"redis/local delivered/s, same run: {ratio:.2f}x"]
    notes: list[str] = []
    for r in results:
        if r.publish_errors:
            what = ", ".join(f"{k} x{v}" for k, v in r.publish_errors.most_common())
            notes.append(f"- {r.backend}: {r.events - r.accepted:,} publishes failed: {what}")
        if r.unexpected:
            notes.append(f"- {r.backend}: {r.unexpected:,} arrivals with an unknown webhook-id")
        notes += [f"- {r.backend}: {note}" for note in r.notes]
    if notes:
        out += ["", *notes]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# Main.


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2000, help="events published per store")
    parser.add_argument("--clients", type=int, default=16, help="concurrent publishing tasks")
    parser.add_argument("--only", choices=BACKENDS, help="one store backend only")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for arrivals after publishing"
    )
    parser.add_argument("--markdown-out", metavar="FILE", help="append the report to FILE")
    args = parser.parse_args(argv)
    if args.events < 1 or args.clients < 1 or args.timeout <= 0:
        parser.error("--events and --clients must be >= 1, --timeout > 0")
    args.backends = [args.only] if args.only else list(BACKENDS)
    return args


def bench(args: argparse.Namespace, argv: Sequence[str]) -> str:
    results: list[Result] = []
    skipped: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="gateway-bench-webhooks-") as tmp,
        Processes(Path(tmp)) as procs,
    ):
        for backend in args.backends:
            if backend == "redis" and not shutil.which("redis-server"):
                skipped.append("redis (redis-server not installed)")
                continue
            print(f"bench: webhooks on {backend} ...", file=sys.stderr, flush=True)
            result = measure(procs, backend, args.events, args.clients, args.timeout)
            results.append(result)
            print(
                f"bench: webhooks on {backend}: {result.throughput:,.0f} delivered/s,"
                f" p50 {result.percentile(50):,.1f} ms, {result.missing:,} missing",
                file=sys.stderr,
                flush=True,
            )
    python = ".".join(str(v) for v in sys.version_info[:3])
    header = (
        f"**webhooks:** {args.events:,} events per store from {args.clients} publishing clients,"
        f" one endpoint (`*`), poll_interval {POLL_INTERVAL}, concurrency defaults"
        f" · **nproc:** {nproc()} · **Python:** {python}"
        f" · **reproduce:** `{reproduce(argv, 'bench/webhooks.py')}`"
    )
    report = render(results, header)
    if skipped:
        report += f"\nskipped: {', '.join(skipped)}\n"
    return report


def main(argv: Sequence[str] | None = None) -> int:
    return run_report(parse_args, bench, argv)


if __name__ == "__main__":
    sys.exit(main())
