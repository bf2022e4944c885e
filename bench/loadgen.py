"""A fallback HTTP load generator (aiohttp) for when wrk is not installed; prints one JSON line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import aiohttp


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    non_2xx_3xx: int = 0
    errors: int = 0


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx_3xx: int
    errors: int


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


async def _connection(
    session: aiohttp.ClientSession, url: str, deadline: float, tally: Tally
) -> None:
    while (start := time.perf_counter()) < deadline:
        try:
            async with session.get(url) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            tally.errors += 1
            continue
        tally.latencies.append(time.perf_counter() - start)
        if not 200 <= status < 400:
            tally.non_2xx_3xx += 1


async def run_load(
    url: str, connections: int, duration: float, headers: dict[str, str] | None = None
) -> LoadResult:
    """Keep `connections` keep-alive requests in flight for `duration` seconds."""
    tally = Tally()
    # One pooled connection per worker task, as wrk -c does: limit caps the pool at that count.
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    # Like wrk's default 2 s socket timeout: a stuck request is an error, not an endless wait.
    timeout = aiohttp.ClientTimeout(total=2.0)
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        headers=headers,
        skip_auto_headers=("Accept-Encoding",),
    ) as session:
        began = time.perf_counter()
        deadline = began + duration
        workers = [_connection(session, url, deadline, tally) for _ in range(connections)]
        await asyncio.gather(*workers)
        elapsed = time.perf_counter() - began
    ordered = sorted(tally.latencies)
    return LoadResult(
        requests=len(ordered),
        seconds=elapsed,
        rps=len(ordered) / elapsed if elapsed > 0 else 0.0,
        p50_ms=percentile(ordered, 50) * 1000,
        p99_ms=percentile(ordered, 99) * 1000,
        non_2xx_3xx=tally.non_2xx_3xx,
        errors=tally.errors,
    )


def parse_header(value: str) -> tuple[str, str]:
    """`Name: value`, as wrk -H takes it."""
    name, sep, rest = value.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {value!r}")
    return name.strip(), rest.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument(
        "-H",
        "--header",
        type=parse_header,
        action="append",
        default=[],
        help="'Name: value' sent with every request (repeatable), like wrk -H",
    )
    args = parser.parse_args()
    headers = dict(args.header)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    # uvloop, when present, so the generator is less of a bottleneck than it would be otherwise.
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        result = runner.run(run_load(args.url, args.connections, args.duration, headers))
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
