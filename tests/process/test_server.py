"""The gateway as a real process: shipped config, drain on SIGTERM, timeouts, workers, memory."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import (
    ADMIN_TOKEN,
    ROOT,
    GatewayProc,
    RedisServer,
    Spawn,
    Upstream,
    UpstreamFactory,
    free_port,
    parse_response,
    read_one_response,
    unique_prefix,
)
from tests.helpers import ADMIN, eventually, slow_upstream, start_shipped, wait_for_text

pytestmark = pytest.mark.slow


def _config(target: str, **extra: Any) -> dict[str, Any]:
    return {
        "admin": {"token": ADMIN_TOKEN},
        "upstreams": {"app": {"targets": [target]}},
        "routes": [{"path": "/{rest:.*}", "upstream": "app", "auth": "none"}],
        **extra,
    }


async def _exit_code(proc: subprocess.Popen[bytes], timeout: float = 15) -> int:
    return await asyncio.to_thread(proc.wait, timeout)


def _log_events(gp: GatewayProc) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in gp.log_text().splitlines() if line.startswith("{")]


def _start_shipped(tmp_path: Path, port: int, admin_port: int, run: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GATEWAY_PORT": str(port), "GATEWAY_ADMIN_PORT": str(admin_port)}
    env.pop("GATEWAY_ADMIN_TOKEN", None)
    return start_shipped(tmp_path, port, admin_port, run, env)


def _cli(tmp_path: Path, admin_port: int, *args: str) -> Any:
    """The CLI as an operator runs it, finding the admin API and token like `make run` left them."""
    env = {**os.environ, "GATEWAY_ADMIN_PORT": str(admin_port)}
    env.pop("GATEWAY_ADMIN_TOKEN", None)
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args, "-c", str(ROOT / "gateway.yaml"), "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


async def test_newcomer_flow_on_the_shipped_config(tmp_path: Path) -> None:
    """`make run`: a demo key is printed; the CLI makes orgs and keys; revocation is at once;
    everything a client was told survives a restart."""
    port, admin_port = free_port(), free_port()
    proc = _start_shipped(tmp_path, port, admin_port, 1)
    url = f"http://127.0.0.1:{port}"
    try:
        banner = await wait_for_text(tmp_path / "err-1.log", "Try it:")
        [demo_key] = re.findall(r"fw_live_[0-9A-Za-z]{38}", banner)[:1]
        assert f'curl -H "Authorization: Bearer {demo_key}" http://localhost:{port}/v1/me' in banner
        assert demo_key not in (tmp_path / "out-1.log").read_text()  # never in the JSON log
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/status") as r:
                assert r.status == 200
            async with session.get(f"{url}/v1/echo/hello") as r:
                assert r.status == 401
            demo = {"Authorization": f"Bearer {demo_key}"}
            async with session.get(f"{url}/v1/me", headers=demo) as r:
                me = await r.json()
            assert me["data"]["orgSlug"] == "demo"
            assert me["data"]["scopes"] == ["admin"]
            async with session.post(f"{url}/v1/echo/hello?x=1", headers=demo, data=b"hi") as r:
                echoed = await r.json()
            assert echoed["headers"]["X-Org-Slug"] == "demo"
            assert echoed["headers"]["X-Scopes"] == "admin read webhooks:write write"

            org = _cli(
                tmp_path,
                admin_port,
                "orgs",
                "create",
                "acme",
                "--name",
                "Acme Pumps",
                "--plan",
                "standard",
            )
            assert org["slug"] == "acme"
            key = _cli(
                tmp_path, admin_port, "keys", "create", "acme", "--name", "zap", "--scope", "read"
            )
            assert key["secret"].startswith("fw_live_")
            listed = _cli(tmp_path, admin_port, "keys", "list", "acme")
            assert [k["id"] for k in listed] == [key["id"]]
            assert "secret" not in listed[0]
            zap = {"Authorization": f"Bearer {key['secret']}"}
            async with session.get(f"{url}/v1/echo/x", headers=zap) as r:
                assert r.status == 200
            async with session.post(f"{url}/v1/echo/x", headers=zap) as r:
                assert r.status == 403
            revoked = _cli(tmp_path, admin_port, "keys", "revoke", key["id"])
            assert revoked["revokedAt"] is not None
            async with session.get(f"{url}/v1/echo/x", headers=zap) as r:
                assert r.status == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await _exit_code(proc) == 0
    proc = _start_shipped(tmp_path, port, admin_port, 2)
    try:
        assert "Demo org 'demo' exists" in await wait_for_text(tmp_path / "err-2.log", "exists")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/v1/me", headers=demo) as r:
                assert r.status == 200
            async with session.get(f"{url}/v1/echo/x", headers=zap) as r:
                assert r.status == 401
        assert [o["slug"] for o in _cli(tmp_path, admin_port, "orgs", "list")] == ["demo", "acme"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await _exit_code(proc) == 0


def test_cli_reports_errors_without_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "GATEWAY_ADMIN_PORT": str(free_port()), "GATEWAY_ADMIN_TOKEN": "x" * 20}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "orgs", "list", "-c", str(ROOT / "gateway.yaml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot reach the admin API at http://127.0.0.1:")
    assert "Traceback" not in done.stderr


async def test_sigterm_drains_in_flight_requests_then_exits_0(
    spawn_gateway: Spawn, upstream_factory: UpstreamFactory
) -> None:
    up = await upstream_factory(slow_upstream(1.0, "finished"))
    gp = spawn_gateway(_config(up.url, server={"drain_timeout": "10s"}))
    async with aiohttp.ClientSession() as session:
        pending = asyncio.create_task(session.get(f"{gp.url}/slow"))
        await eventually(lambda: up.seen)  # in flight
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
    server = {"idle_timeout": "1s", "header_timeout": "1s"}
    gp = spawn_gateway(_config(upstream.url, server=server))
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", gp.port)
    started = loop.time()
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # a head that never completes
    async with asyncio.timeout(5):
        assert parse_response(await reader.read())[0] == 408  # then closed by the server
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
    spawn_gateway: Spawn, upstream: Upstream, redis_server: RedisServer
) -> None:
    store = {"backend": "redis", "url": redis_server.url, "key_prefix": unique_prefix()}
    gp = spawn_gateway(_config(upstream.url, workers=2, store=store))
    async with aiohttp.ClientSession() as session:

        async def both_alive() -> Any:
            async with session.get(f"{gp.admin_url}/readyz") as r:
                ready = (await r.json())["data"]
            return ready if ready["workers"]["alive"] == 2 else None

        ready = await eventually(both_alive, 10, interval=0.25)  # workers come up one by one
        assert ready["status"] == "ready"
        results = []
        for _ in range(40):
            async with aiohttp.ClientSession() as fresh, fresh.get(f"{gp.url}/x") as r:
                results.append(r.status)
        assert results == [200] * 40

        async def all_counted() -> bool:
            # A request is counted as its handler ends, a moment after the client has it.
            async with session.get(f"{gp.admin_url}/metrics") as r:
                text = await r.text()
            return (
                'gateway_requests_total{method="GET",route="/{rest:.*}",status_class="2xx"} 40.0'
                in text
            )

        await eventually(all_counted)

        async def all_logged() -> bool:
            # Each worker writes its own entries; the supervisor's admin API reads them all.
            async with session.get(f"{gp.admin_url}/admin/requests?limit=100", headers=ADMIN) as r:
                return len((await r.json())["data"]) == 40

        await eventually(all_logged)
        gp.proc.send_signal(signal.SIGHUP)  # a reload nobody asked for over the API

        async def reload_audited() -> Any:
            async with session.get(f"{gp.admin_url}/admin/audit", headers=ADMIN) as r:
                return [(e["actor"], e["action"]) for e in (await r.json())["data"]]

        await eventually(reload_audited, expect=[("sighup", "config.reload")])
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
