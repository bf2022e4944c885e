"""Slow clients: header_timeout cuts partial and trickled request heads; idle_timeout the idle.

The clients here are slow in real time on purpose: the listener's deadlines run on the event
loop's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from typing import Any

import aiohttp
import pytest

from gateway.config import ConfigError, parse_config
from tests.conftest import (
    ADMIN_TOKEN,
    GatewayFactory,
    RunningGateway,
    Spawn,
    Upstream,
    make_config,
    parse_response,
    read_one_response,
    until_closed,
)

PARTIAL_HEAD = b"GET /v1/x HTTP/1.1\r\nHost: gw\r\nX-Slow: "
REQUEST = b"GET /v1/x HTTP/1.1\r\nHost: gw\r\n\r\n"


async def _start(factory: GatewayFactory, upstream: Upstream, **server: Any) -> RunningGateway:
    return await factory(
        make_config(
            {"app": {"targets": [upstream.url]}},
            [{"path": "/v1/{rest:.*}", "upstream": "app"}],
            server=server,
        )
    )


def _assert_head_timeout_answer(data: bytes) -> None:
    status, headers, body = parse_response(data)
    assert status == 408
    assert headers["content-type"] == "application/json"
    assert b'"code":"request_timeout"' in body
    assert headers["x-request-id"]


async def _trickle(writer: asyncio.StreamWriter, every: float) -> int:
    """Send one more byte of a header value every `every` seconds until the server hangs up."""
    sent = 0
    with contextlib.suppress(ConnectionError):
        while not writer.is_closing():
            writer.write(b"a")
            await writer.drain()
            sent += 1
            await asyncio.sleep(every)
    return sent


async def test_hundred_partial_heads_are_all_answered_408_and_closed_at_header_timeout(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    gw = await _start(gateway_factory, upstream, header_timeout="1s")
    loop = asyncio.get_running_loop()

    async def partial_head() -> tuple[float, bytes]:
        # Timed from before the connect: the server's deadline starts at its accept, which a
        # busy loop may report to this side late; timed from after, a cut looked early.
        started = loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(PARTIAL_HEAD)  # and then nothing more
        try:
            # The idle timeout is 75s: only the head deadline can close these in time.
            data = await until_closed(reader, timeout=5)
        finally:
            writer.close()
        return loop.time() - started, data

    results = await asyncio.gather(*(partial_head() for _ in range(100)))
    for elapsed, data in results:
        assert 0.9 <= elapsed < 3
        _assert_head_timeout_answer(data)
    # The gateway keeps serving complete requests.
    async with gw.session.get(f"{gw.url}/v1/after") as response:
        assert response.status == 200


async def test_trickled_head_is_cut_at_the_deadline_though_bytes_keep_coming(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    gw = await _start(gateway_factory, upstream, header_timeout="1s")
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    started = loop.time()
    writer.write(PARTIAL_HEAD)
    trickler = asyncio.create_task(_trickle(writer, every=0.2))
    data = await until_closed(reader, timeout=5)
    elapsed = loop.time() - started
    writer.close()
    sent = await trickler
    # A byte every 200 ms never leaves the connection quiet for 1s: the deadline is total.
    assert 0.9 <= elapsed < 2.5
    assert sent >= 4
    _assert_head_timeout_answer(data)


async def test_a_later_heads_deadline_runs_from_its_first_byte_not_the_last_response(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    gw = await _start(gateway_factory, upstream, header_timeout="1s")
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(REQUEST)
    status, _, _ = parse_response(await read_one_response(reader))
    assert status == 200
    await asyncio.sleep(1.5)  # idle, governed by idle_timeout (75s): past one header_timeout
    started = loop.time()
    writer.write(PARTIAL_HEAD)
    trickler = asyncio.create_task(_trickle(writer, every=0.2))
    data = await until_closed(reader, timeout=5)
    elapsed = loop.time() - started
    writer.close()
    await trickler
    assert 0.9 <= elapsed < 2.5
    _assert_head_timeout_answer(data)


async def test_keep_alive_connection_idle_between_requests_is_governed_by_idle_timeout(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    gw = await _start(gateway_factory, upstream, header_timeout="1s", idle_timeout="2500ms")
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(REQUEST)
    assert parse_response(await read_one_response(reader))[0] == 200
    await asyncio.sleep(1.5)  # longer than header_timeout, shorter than idle_timeout
    writer.write(REQUEST)
    assert parse_response(await read_one_response(reader))[0] == 200
    answered = loop.time()
    # Then quiet: closed by idle_timeout, silently (no 408 to a client that asked nothing).
    assert await until_closed(reader, timeout=5) == b""
    assert 2.2 <= loop.time() - answered < 4
    writer.close()


async def test_connection_that_sends_nothing_is_closed_silently_at_header_timeout(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    gw = await _start(gateway_factory, upstream, header_timeout="1s")
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    started = loop.time()
    assert await until_closed(reader, timeout=5) == b""
    assert 0.9 <= loop.time() - started < 2.5
    writer.close()


async def test_slow_but_complete_head_within_the_deadline_is_served_past_the_idle_timeout(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    gw = await _start(gateway_factory, upstream, header_timeout="3s", idle_timeout="1s")
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(REQUEST)
    assert parse_response(await read_one_response(reader))[0] == 200
    await asyncio.sleep(0.5)  # idle, within the idle timeout
    # The next head starts within the idle timeout and takes 1.5s in pieces: its own deadline
    # (3s) governs it, not the idle timer that would have closed the connection at 1s.
    for piece in (b"GET /v1/slow HTTP/1.1\r\n", b"Host: gw\r\n", b"X-A: 1\r\n", b"X-B: 2\r\n"):
        writer.write(piece)
        await asyncio.sleep(0.375)
    writer.write(b"\r\n")
    status, _, _ = parse_response(await read_one_response(reader))
    assert status == 200
    assert upstream.seen[-1].raw_path == "/v1/slow"
    writer.close()


async def test_admin_listener_cuts_partial_heads_too(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    gw = await _start(gateway_factory, upstream, header_timeout="1s")
    admin_port = gw.process.admin_address[1]
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", admin_port)
    started = loop.time()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nX-Slow: ")
    data = await until_closed(reader, timeout=5)
    assert 0.9 <= loop.time() - started < 2.5
    _assert_head_timeout_answer(data)
    writer.close()
    async with gw.session.get(f"{gw.admin_url}/healthz") as response:
        assert response.status == 200


def _p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98]


@pytest.mark.slow
async def test_real_clients_keep_their_latency_during_a_slow_header_attack(
    spawn_gateway: Spawn,
) -> None:
    gp = spawn_gateway(
        {
            "admin": {"token": ADMIN_TOKEN},
            "server": {"header_timeout": "1s"},
            "log": {"access_log": False},
            "upstreams": {"demo": {"builtin": "echo"}},
            "routes": [{"path": "/status", "upstream": "demo", "auth": "none"}],
        }
    )
    loop = asyncio.get_running_loop()
    cut = 0

    async def attacker(stop: asyncio.Event) -> None:
        # Partial head, a byte every 200 ms until cut, reconnect: 100 of these at once.
        nonlocal cut
        while not stop.is_set():
            reader, writer = await asyncio.open_connection("127.0.0.1", gp.port)
            writer.write(PARTIAL_HEAD)
            trickler = asyncio.create_task(_trickle(writer, every=0.2))
            try:
                data = await until_closed(reader, timeout=5)
            finally:
                writer.close()
                await trickler
            _assert_head_timeout_answer(data)
            cut += 1

    async def latencies(session: aiohttp.ClientSession) -> list[float]:
        samples = []
        for _ in range(200):
            started = time.perf_counter()
            async with session.get(f"{gp.url}/status") as response:
                await response.read()
                assert response.status == 200
            samples.append(time.perf_counter() - started)
        return samples

    async with aiohttp.ClientSession() as session:
        await latencies(session)  # warm up
        before = await latencies(session)
        stop = asyncio.Event()
        attackers = [asyncio.create_task(attacker(stop)) for _ in range(100)]
        await asyncio.sleep(1.5)  # every attacker connected, the first wave cut
        attack_started = loop.time()
        during = await latencies(session)
        while loop.time() - attack_started < 1.2:  # at least one more wave of cuts
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*attackers)
    assert cut >= 100  # the attack was live and its connections were cut throughout
    # Generous: the machine is shared; a server starved by 100 slow heads would be far worse.
    assert _p99(during) <= max(4 * _p99(before), _p99(before) + 0.1), (_p99(before), _p99(during))


def test_header_timeout_defaults_to_10s() -> None:
    config = parse_config(b"{}\n", source="t.yaml", env={}).config
    assert config.server.header_timeout == 10.0


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("500ms", "at least 1s"),
        ("0", "at least 1s"),
        ("11m", "at most 10m"),
        (".inf", "finite"),
        (".nan", "finite"),
    ],
)
def test_header_timeout_outside_1s_to_10m_or_not_finite_is_refused(value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"server: {{header_timeout: {value}}}\n".encode(), source="t.yaml", env={})
    [problem] = info.value.problems
    assert problem.startswith("server.header_timeout: must be ")
    assert reason in problem


@pytest.mark.parametrize(("value", "seconds"), [("1s", 1.0), ("10m", 600.0), ("2500ms", 2.5)])
def test_header_timeout_bounds_are_inclusive(value: str, seconds: float) -> None:
    text = f"server: {{header_timeout: {value}}}\n".encode()
    assert parse_config(text, source="t.yaml", env={}).config.server.header_timeout == seconds
