"""Hot reload: a new snapshot swapped in whole, a broken file harmless, no request dropped."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from gateway.config import load_config
from gateway.process.gateway import GatewayProcess
from tests.conftest import GatewayProc, Upstream

ADMIN = {"Authorization": "Bearer test-admin-token-0123456789"}
UpstreamFactory = Callable[..., Awaitable[Upstream]]


def write_config(path: Path, upstream: Upstream, routes: list[str], **extra: Any) -> None:
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0, "token": "test-admin-token-0123456789"},
        "store": {"path": str(path.parent / "state.db")},
        "upstreams": {"app": {"targets": [upstream.url]}},
        "routes": [{"path": p, "upstream": "app", "auth": "none"} for p in routes],
        **extra,
    }
    path.write_text(yaml.safe_dump(config))


class Running:
    def __init__(self, process: GatewayProcess, session: aiohttp.ClientSession) -> None:
        self.process = process
        self.session = session
        self.url = f"http://127.0.0.1:{process.data_address[1]}"
        self.admin_url = f"http://127.0.0.1:{process.admin_address[1]}"

    async def status(self, path: str) -> int:
        async with self.session.get(f"{self.url}{path}") as r:
            await r.read()
            return r.status


@pytest.fixture
async def from_file(tmp_path: Path) -> AsyncIterator[Callable[[Path], Awaitable[Running]]]:
    started: list[Running] = []

    async def start(path: Path) -> Running:
        process = GatewayProcess(load_config(path))
        await process.start()
        running = Running(process, aiohttp.ClientSession())
        started.append(running)
        return running

    yield start
    for running in started:
        await running.session.close()
        await running.process.stop()


async def test_a_reload_serves_new_routes_and_a_broken_file_is_harmless(
    from_file: Callable[[Path], Awaitable[Running]], upstream: Upstream, tmp_path: Path
) -> None:
    path = tmp_path / "gateway.yaml"
    write_config(path, upstream, ["/a"])
    gw = await from_file(path)
    first_hash = gw.process.loaded.digest
    assert (await gw.status("/a"), await gw.status("/b")) == (200, 404)

    write_config(path, upstream, ["/a", "/b"])
    assert await gw.process.reload() == []
    assert (await gw.status("/a"), await gw.status("/b")) == (200, 200)

    path.write_text(path.read_text().replace("upstream: app", "upstream: appp", 1))
    async with gw.session.post(f"{gw.admin_url}/admin/reload", headers=ADMIN) as r:
        assert r.status == 400
        body = await r.json()
    assert body["error"]["code"] == "config_invalid"
    assert "routes[0].upstream: unknown upstream 'appp' (known: app)" in body["error"]["message"]
    assert (await gw.status("/a"), await gw.status("/b")) == (200, 200)  # the old one serves

    write_config(path, upstream, ["/b"], listen={"host": "127.0.0.1", "port": 1})
    assert await gw.process.reload() == ["listen: changing this needs a restart"]

    write_config(path, upstream, ["/b"])
    async with gw.session.post(f"{gw.admin_url}/admin/reload", headers=ADMIN) as r:
        assert r.status == 200
        reloaded = (await r.json())["data"]
    assert reloaded["hash"] == gw.process.loaded.digest != first_hash
    assert (await gw.status("/a"), await gw.status("/b")) == (404, 200)
    async with gw.session.get(f"{gw.admin_url}/metrics") as r:
        text = await r.text()
    assert 'gateway_config_reloads_total{result="ok"} 2.0' in text
    assert 'gateway_config_reloads_total{result="error"} 2.0' in text
    assert f'gateway_config_info{{hash="{gw.process.loaded.digest}"}} 1.0' in text
    assert f'hash="{first_hash}"' not in text


async def test_no_request_fails_during_reloads_under_load(
    from_file: Callable[[Path], Awaitable[Running]],
    upstream_factory: UpstreamFactory,
    tmp_path: Path,
) -> None:
    async def slowish(request: web.BaseRequest) -> web.Response:
        await asyncio.sleep(0.01)
        return web.Response(text="ok")

    up = await upstream_factory(slowish, record=False)
    path = tmp_path / "gateway.yaml"
    write_config(path, up, ["/x", "/y"])
    gw = await from_file(path)
    statuses: list[int] = []
    stop = time.monotonic() + 2.5

    async def client() -> None:
        while time.monotonic() < stop:
            statuses.append(await gw.status("/x"))

    async def reloader() -> None:
        for i in range(6):
            await asyncio.sleep(0.3)
            write_config(path, up, ["/x", "/y"] if i % 2 else ["/x", "/z"])
            assert await gw.process.reload() == []

    await asyncio.gather(*(client() for _ in range(8)), reloader())
    assert len(statuses) > 100
    assert set(statuses) == {200}


async def test_requests_in_flight_finish_on_the_snapshot_they_started_on(
    from_file: Callable[[Path], Awaitable[Running]],
    upstream_factory: UpstreamFactory,
    tmp_path: Path,
) -> None:
    async def slow(request: web.BaseRequest) -> web.Response:
        await asyncio.sleep(0.5)
        return web.Response(text="finished")

    up = await upstream_factory(slow, record=False)
    path = tmp_path / "gateway.yaml"
    write_config(path, up, ["/slow"])
    gw = await from_file(path)
    pending = asyncio.create_task(gw.status("/slow"))
    await asyncio.sleep(0.1)
    write_config(path, up, ["/other"])  # the route the request is on goes away
    assert await gw.process.reload() == []
    assert await pending == 200
    assert await gw.status("/slow") == 404


async def test_sighup_and_the_file_watch_reload_a_running_gateway(
    spawn_gateway: Callable[..., GatewayProc], upstream: Upstream, tmp_path: Path
) -> None:
    config = {
        "admin": {"token": "test-admin-token-0123456789"},
        "reload": {"watch": True, "interval": "200ms"},
        "upstreams": {"app": {"targets": [upstream.url]}},
        "routes": [{"path": "/a", "upstream": "app", "auth": "none"}],
    }
    gp = spawn_gateway(config)
    [path] = sorted(tmp_path.glob("gateway-*.yaml"))

    async def status_eventually(session: aiohttp.ClientSession, url: str, wanted: int) -> float:
        started = time.monotonic()
        while True:
            async with session.get(url) as r:
                if r.status == wanted:
                    return time.monotonic() - started
            assert time.monotonic() - started < 3, f"{url} not {wanted}"
            await asyncio.sleep(0.05)

    data = yaml.safe_load(path.read_text())
    async with aiohttp.ClientSession() as session:
        data["routes"].append({"path": "/b", "upstream": "app", "auth": "none"})
        path.write_text(yaml.safe_dump(data))  # the watch picks this up
        assert await status_eventually(session, f"{gp.url}/b", 200) < 1.5
        data["routes"].append({"path": "/c", "upstream": "app", "auth": "none"})
        data["reload"]["watch"] = True
        path.write_text(yaml.safe_dump(data))
        gp.proc.send_signal(signal.SIGHUP)
        assert await status_eventually(session, f"{gp.url}/c", 200) < 1.0
        path.write_text("routes: [")  # a typo: reported, harmless
        gp.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        async with session.get(f"{gp.url}/c") as r:
            assert r.status == 200
    assert '"event":"config_reload_failed"' in gp.log_text()
