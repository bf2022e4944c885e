"""The gateway as a real process: shipped config, drain on SIGTERM, timeouts, workers, memory."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import (
    ROOT,
    GatewayProc,
    Upstream,
    free_port,
    parse_response,
    read_one_response,
    wait_until_listening,
)

Spawn = Callable[..., GatewayProc]
UpstreamFactory = Callable[..., Awaitable[Upstream]]

pytestmark = pytest.mark.slow


def _config(target: str, **extra: Any) -> dict[str, Any]:
    return {
        "admin": {"token": "test-admin-token-0123456789"},
        "upstreams": {"app": {"targets": [target]}},
        "routes": [{"path": "/{rest:.*}", "upstream": "app", "auth": "none"}],
        **extra,
    }


async def _exit_code(proc: subprocess.Popen[bytes], timeout: float = 15) -> int:
    return await asyncio.to_thread(proc.wait, timeout)


def _log_events(gp: GatewayProc) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in gp.log_text().splitlines() if line.startswith("{")]


async def test_shipped_config_serves_the_demo_upstream(tmp_path: Path) -> None:
    """What `make run` starts: the README's first curl works with nothing else running."""
    port, admin_port = free_port(), free_port()
    env = {**os.environ, "GATEWAY_PORT": str(port), "GATEWAY_ADMIN_PORT": str(admin_port)}
    with (tmp_path / "out.log").open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(ROOT / "gateway.yaml")],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_listening(port, proc)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/v1/echo/hello?x=1") as r:
                body = await r.json()
                assert r.status == 200
            assert body["path"] == "/v1/echo/hello"
            assert body["query"] == "x=1"
            assert body["headers"]["X-Request-ID"] == r.headers["X-Request-Id"]
            async with session.get(f"http://127.0.0.1:{admin_port}/readyz") as r:
                assert r.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await _exit_code(proc) == 0


async def test_sigterm_drains_in_flight_requests_then_exits_0(
    spawn_gateway: Spawn, upstream_factory: UpstreamFactory
) -> None:
    async def slow(request: web.BaseRequest) -> web.Response:
        await asyncio.sleep(1.0)
        return web.Response(text="finished")

    up = await upstream_factory(slow)
    gp = spawn_gateway(_config(up.url, server={"drain_timeout": "10s"}))
    async with aiohttp.ClientSession() as session:
        pending = asyncio.create_task(session.get(f"{gp.url}/slow"))
        await asyncio.sleep(0.3)
        gp.proc.send_signal(signal.SIGTERM)
        response = await pending
        assert response.status == 200
        assert await response.text() == "finished"
        response.release()
    assert await _exit_code(gp.proc) == 0
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as session, session.get(f"{gp.url}/x"):
            pass
    events = [e["event"] for e in _log_events(gp)]
    # The access log line of the drained request was flushed before exit.
    assert (
        events.index("gateway_draining") < events.index("request") < events.index("gateway_stopped")
    )


async def test_idle_and_slow_header_connections_are_closed(
    spawn_gateway: Spawn, upstream: Upstream
) -> None:
    gp = spawn_gateway(_config(upstream.url, server={"idle_timeout": "1s"}))
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", gp.port)
    started = loop.time()
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # a head that never completes
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # closed by the server
    assert 0.8 < loop.time() - started < 4
    writer.close()
    # A keep-alive connection that goes quiet after a response is closed as well.
    reader, writer = await asyncio.open_connection("127.0.0.1", gp.port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(5):
        data = await reader.read()  # the response, then EOF when idle
    assert data.startswith(b"HTTP/1.1 200")
    writer.close()


async def test_stalled_request_body_is_408(spawn_gateway: Spawn, upstream: Upstream) -> None:
    gp = spawn_gateway(_config(upstream.url, server={"body_timeout": "500ms"}))
    reader, writer = await asyncio.open_connection("127.0.0.1", gp.port)
    writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
    status, _, body = parse_response(await read_one_response(reader))
    assert status == 408
    assert b'"code":"request_timeout"' in body
    writer.close()


async def test_workers_share_one_port_and_one_metrics_endpoint(
    spawn_gateway: Spawn, upstream: Upstream
) -> None:
    gp = spawn_gateway(_config(upstream.url, workers=2))
    async with aiohttp.ClientSession() as session:
        for _ in range(40):  # workers come up one by one: wait for both
            async with session.get(f"{gp.admin_url}/readyz") as r:
                ready = await r.json()
            if ready["data"]["workers"]["alive"] == 2:
                break
            await asyncio.sleep(0.25)
        assert ready["data"]["status"] == "ready"
        results = []
        for _ in range(40):
            async with aiohttp.ClientSession() as fresh, fresh.get(f"{gp.url}/x") as r:
                results.append(r.status)
        assert results == [200] * 40
        await asyncio.sleep(0.2)
        async with session.get(f"{gp.admin_url}/metrics") as r:
            text = await r.text()
    assert 'gateway_requests_total{method="GET",route="/{rest:.*}",status_class="2xx"} 40.0' in text
    started = {e["pid"] for e in _log_events(gp) if e["event"] == "gateway_started"}
    assert len(started) == 2
    gp.proc.send_signal(signal.SIGTERM)
    assert await _exit_code(gp.proc) == 0


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="needs /proc to read peak memory"
)
async def test_one_gib_download_passes_with_flat_memory(
    spawn_gateway: Spawn, upstream_factory: UpstreamFactory
) -> None:
    size = 1024**3
    block = b"\x5a" * (1024 * 1024)

    async def big(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = size
        await response.prepare(request)
        for _ in range(size // len(block)):
            await response.write(block)
        return response

    up = await upstream_factory(big)
    gp = spawn_gateway(_config(up.url))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gp.url}/warm") as r:
            await r.read()
        before = _peak_rss_kib(gp.proc.pid)
        received = 0
        async with session.get(f"{gp.url}/big", timeout=aiohttp.ClientTimeout(total=120)) as r:
            async for chunk in r.content.iter_chunked(1024 * 1024):
                received += len(chunk)
    assert received == size
    growth_mib = (_peak_rss_kib(gp.proc.pid) - before) / 1024
    assert growth_mib < 64, f"peak memory grew by {growth_mib:.0f} MiB for a 1 GiB body"
