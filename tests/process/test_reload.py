"""Hot reload: a new snapshot swapped in whole, a broken file harmless, no request dropped."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import yaml

from tests.conftest import (
    ADMIN_TOKEN,
    GatewayFactory,
    RunningGateway,
    Spawn,
    Upstream,
    UpstreamFactory,
)
from tests.helpers import ADMIN, eventually, slow_upstream, write_config


async def status(gw: RunningGateway, path: str) -> int:
    async with gw.session.get(f"{gw.url}{path}") as r:
        await r.read()
        return r.status


async def test_a_reload_serves_new_routes_and_a_broken_file_is_harmless(
    gateway_factory: GatewayFactory, upstream: Upstream, tmp_path: Path
) -> None:
    path = tmp_path / "gateway.yaml"
    write_config(path, upstream, ["/a"])
    gw = await gateway_factory(path)
    first_hash = gw.process.loaded.digest
    assert (await status(gw, "/a"), await status(gw, "/b")) == (200, 404)

    write_config(path, upstream, ["/a", "/b"])
    assert await gw.process.reload() == []
    assert (await status(gw, "/a"), await status(gw, "/b")) == (200, 200)

    path.write_text(path.read_text().replace("upstream: app", "upstream: appp", 1))
    async with gw.session.post(f"{gw.admin_url}/admin/reload", headers=ADMIN) as r:
        assert r.status == 400
        body = await r.json()
    assert body["error"]["code"] == "config_invalid"
    assert "routes[0].upstream: unknown upstream 'appp' (known: app)" in body["error"]["message"]
    assert (await status(gw, "/a"), await status(gw, "/b")) == (200, 200)  # the old one serves

    write_config(path, upstream, ["/b"], listen={"host": "127.0.0.1", "port": 1})
    assert await gw.process.reload() == ["listen: changing this needs a restart"]

    write_config(path, upstream, ["/b"])
    async with gw.session.post(f"{gw.admin_url}/admin/reload", headers=ADMIN) as r:
        assert r.status == 200
        reloaded = (await r.json())["data"]
    assert reloaded["hash"] == gw.process.loaded.digest != first_hash
    assert (await status(gw, "/a"), await status(gw, "/b")) == (404, 200)
    text = await gw.metrics()
    assert 'gateway_config_reloads_total{result="ok"} 2.0' in text
    assert 'gateway_config_reloads_total{result="error"} 2.0' in text
    assert f'gateway_config_info{{hash="{gw.process.loaded.digest}"}} 1.0' in text
    assert f'hash="{first_hash}"' not in text


async def test_no_request_fails_during_reloads_under_load(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, tmp_path: Path
) -> None:
    up = await upstream_factory(slow_upstream(0.01), record=False)
    path = tmp_path / "gateway.yaml"
    write_config(path, up, ["/x", "/y"])
    gw = await gateway_factory(path)
    statuses: list[int] = []
    stop = time.monotonic() + 2.5

    async def client() -> None:
        while time.monotonic() < stop:
            statuses.append(await status(gw, "/x"))

    async def reloader() -> None:
        for i in range(6):
            await asyncio.sleep(0.3)  # real time: the reloads are spread over the load
            write_config(path, up, ["/x", "/y"] if i % 2 else ["/x", "/z"])
            assert await gw.process.reload() == []

    await asyncio.gather(*(client() for _ in range(8)), reloader())
    assert len(statuses) > 100
    assert set(statuses) == {200}


async def test_requests_in_flight_finish_on_the_snapshot_they_started_on(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, tmp_path: Path
) -> None:
    up = await upstream_factory(slow_upstream(0.5, "finished"))
    path = tmp_path / "gateway.yaml"
    write_config(path, up, ["/slow"])
    gw = await gateway_factory(path)
    pending = asyncio.create_task(status(gw, "/slow"))
    await eventually(lambda: up.seen)  # the request is at the upstream
    write_config(path, up, ["/other"])  # the route the request is on goes away
    assert await gw.process.reload() == []
    assert await pending == 200
    assert await status(gw, "/slow") == 404


async def test_sighup_and_the_file_watch_reload_a_running_gateway(
    spawn_gateway: Spawn, upstream: Upstream, tmp_path: Path
) -> None:
    config = {
        "admin": {"token": ADMIN_TOKEN},
        "reload": {"watch": True, "interval": "200ms"},
        "upstreams": {"app": {"targets": [upstream.url]}},
        "routes": [{"path": "/a", "upstream": "app", "auth": "none"}],
    }
    gp = spawn_gateway(config)
    [path] = sorted(tmp_path.glob("gateway-*.yaml"))

    async def status_eventually(session: aiohttp.ClientSession, url: str, wanted: int) -> float:
        """How long it took until url answers wanted."""

        async def answer() -> int:
            async with session.get(url) as r:
                return r.status

        started = time.monotonic()
        await eventually(answer, 3, expect=wanted, interval=0.05)
        return time.monotonic() - started

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
        await eventually(lambda: '"event":"config_reload_failed"' in gp.log_text())
        async with session.get(f"{gp.url}/c") as r:
            assert r.status == 200
