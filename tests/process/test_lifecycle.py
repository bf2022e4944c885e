"""Start and stop: a failed start releases what it started, a stop drains then releases it all,
and the config in force switches with the snapshot that serves it."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from gateway.config import LoadedConfig, load_config, parse_config
from gateway.dataplane.upstream import UpstreamPool
from gateway.http.listen import ListenError
from gateway.process.gateway import GatewayProcess
from gateway.store import StoreError
from gateway.store.redis import RedisStore
from tests.conftest import (
    GatewayFactory,
    Upstream,
    UpstreamFactory,
    closed_port_url,
    make_config,
)
from tests.helpers import ADMIN, eventually


def _background_tasks() -> list[str]:
    """The gateway's own background tasks still running (all are named by the gateway)."""
    return sorted(
        name
        for task in asyncio.all_tasks()
        if not task.done() and (name := task.get_name()).startswith(("gateway-", "health-"))
    )


def _loaded(tmp_path: Path, config: dict[str, Any]) -> LoadedConfig:
    store = {"path": str(tmp_path / "state.db"), **config.get("store", {})}
    admin = {"token_file": str(tmp_path / "admin-token"), **config.get("admin", {})}
    text = yaml.safe_dump({**config, "store": store, "admin": admin}).encode()
    return parse_config(text, source="test.yaml", env=os.environ)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another socket listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


async def _refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


async def test_a_start_that_fails_on_a_taken_data_port_releases_what_it_started(
    tmp_path: Path, taken_port: int
) -> None:
    config = make_config(
        {"demo": {"builtin": "echo"}},
        [{"path": "/x", "upstream": "demo"}],
        listen={"port": taken_port},
    )
    process = GatewayProcess(_loaded(tmp_path, config))
    with pytest.raises(ListenError, match="listen: cannot listen on"):
        await process.start()
    # Key ring, limit saver, dispatcher, store: all were running, none is left.
    assert _background_tasks() == []
    with pytest.raises(StoreError):  # closed
        await process.store.ping()
    echo_port = int(process._echo["demo"].url.rpartition(":")[2])
    assert await _refused(echo_port)
    await process.stop()  # what the process entry does after a failed start: harmless
    await process.stop()


async def test_a_start_that_fails_on_a_taken_admin_port_closes_the_data_listener(
    tmp_path: Path, taken_port: int, upstream: Upstream
) -> None:
    config = make_config(
        {"app": {"targets": [upstream.url]}},
        [{"path": "/x", "upstream": "app"}],
        admin={"port": taken_port},
    )
    process = GatewayProcess(_loaded(tmp_path, config))
    with pytest.raises(ListenError, match="admin: cannot listen on"):
        await process.start()
    assert process.data_address[1] != 0  # it was open
    assert await _refused(process.data_address[1])
    assert _background_tasks() == []


async def test_a_store_that_cannot_be_reached_holds_nothing_open(tmp_path: Path) -> None:
    url = closed_port_url().replace("http://", "redis://")
    config = make_config(
        {"app": {"targets": [closed_port_url()]}},
        [{"path": "/x", "upstream": "app"}],
        store={"backend": "redis", "url": url},
    )
    process = GatewayProcess(_loaded(tmp_path, config))
    with pytest.raises(StoreError):
        await process.start()
    assert isinstance(process.store, RedisStore)
    with pytest.raises(StoreError, match="not open"):
        _ = process.store.client  # closed, not left behind
    assert _background_tasks() == []
    await process.stop()


async def test_stop_drains_requests_in_flight_while_readyz_says_draining(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory
) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow(request: web.BaseRequest) -> web.Response:
        arrived.set()
        await release.wait()
        return web.Response(text="finished")

    up = await upstream_factory(slow)
    gw = await gateway_factory(
        make_config({"app": {"targets": [up.url]}}, [{"path": "/slow", "upstream": "app"}])
    )
    pending = asyncio.create_task(gw.session.get(f"{gw.url}/slow"))
    await asyncio.wait_for(arrived.wait(), 5)
    stopping = asyncio.create_task(gw.process.stop())
    await eventually(lambda: _refused(gw.port))  # the data listener takes no new connection
    async with gw.session.get(f"{gw.admin_url}/readyz") as r:
        assert (r.status, (await r.json())["data"]["status"]) == (503, "draining")
    assert not stopping.done()
    release.set()
    response = await pending
    assert (response.status, await response.text()) == (200, "finished")
    response.release()
    await asyncio.wait_for(stopping, 10)
    assert await _refused(int(gw.admin_url.rpartition(":")[2]))
    assert _background_tasks() == []


# ---------------------------------------------------------------------------------------------
# Reloads


class HeldStartups:
    """UpstreamPool.startup held on an event once armed; which pools started and stopped."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed = False
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.started: list[UpstreamPool] = []
        self.stopped: list[UpstreamPool] = []
        startup, shutdown = UpstreamPool.startup, UpstreamPool.shutdown

        async def held_startup(pool: UpstreamPool) -> None:
            if self.armed:
                self.entered.set()
                await self.gate.wait()
            await startup(pool)
            self.started.append(pool)

        async def tracked_shutdown(pool: UpstreamPool) -> None:
            self.stopped.append(pool)
            await shutdown(pool)

        monkeypatch.setattr(UpstreamPool, "startup", held_startup)
        monkeypatch.setattr(UpstreamPool, "shutdown", tracked_shutdown)

    def still_running(self) -> list[str]:
        return [pool.name for pool in self.started if pool not in self.stopped]


def _write(path: Path, upstream: Upstream, routes: list[str]) -> None:
    config = make_config(
        {"app": {"targets": [upstream.url]}},
        [{"path": p, "upstream": "app"} for p in routes],
        store={"path": str(path.parent / "state.db")},
    )
    config["admin"]["token_file"] = str(path.parent / "admin-token")
    path.write_text(yaml.safe_dump(config))


@pytest.fixture
async def from_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[[Path], Awaitable[tuple[GatewayProcess, aiohttp.ClientSession]]]]:
    started: list[tuple[GatewayProcess, aiohttp.ClientSession]] = []

    async def start(path: Path) -> tuple[GatewayProcess, aiohttp.ClientSession]:
        process = GatewayProcess(load_config(path))
        await process.start()
        started.append((process, aiohttp.ClientSession()))
        return started[-1]

    yield start
    for process, session in started:
        await session.close()
        await process.stop()


async def _reported_hashes(process: GatewayProcess, session: aiohttp.ClientSession) -> set[str]:
    admin = f"http://127.0.0.1:{process.admin_address[1]}"
    async with session.get(f"{admin}/readyz") as r:
        ready = (await r.json())["data"]["config_hash"]
    async with session.get(f"{admin}/admin/config", headers=ADMIN) as r:
        view = (await r.json())["data"]["hash"]
    return {ready, view}


async def _status(process: GatewayProcess, session: aiohttp.ClientSession, path: str) -> int:
    async with session.get(f"http://127.0.0.1:{process.data_address[1]}{path}") as r:
        await r.read()
        return r.status


async def test_the_config_in_force_switches_with_the_snapshot_that_serves_it(
    from_file: Callable[[Path], Awaitable[tuple[GatewayProcess, aiohttp.ClientSession]]],
    upstream: Upstream,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "gateway.yaml"
    _write(path, upstream, ["/a"])
    process, session = await from_file(path)
    old_hash = process.loaded.digest
    held = HeldStartups(monkeypatch)
    held.armed = True
    _write(path, upstream, ["/a", "/b"])
    reload = asyncio.create_task(process.reload())
    await asyncio.wait_for(held.entered.wait(), 5)
    # The new snapshot is still starting: the old config serves, and is the one reported.
    assert await _status(process, session, "/b") == 404
    assert await _reported_hashes(process, session) == {old_hash}
    held.gate.set()
    assert await reload == []
    assert await _status(process, session, "/b") == 200
    assert await _reported_hashes(process, session) == {process.loaded.digest} != {old_hash}


async def test_a_reload_racing_a_stop_leaves_no_snapshot_running(
    upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldStartups(monkeypatch)
    path = tmp_path / "gateway.yaml"
    _write(path, upstream, ["/a"])
    process = GatewayProcess(load_config(path))
    await process.start()
    held.armed = True
    _write(path, upstream, ["/a", "/b"])
    reload = asyncio.create_task(process.reload())
    await asyncio.wait_for(held.entered.wait(), 5)
    stopping = asyncio.create_task(process.stop())
    await eventually(
        lambda: _refused(process.data_address[1])
    )  # the data listener takes no new connection
    held.gate.set()
    assert await asyncio.wait_for(reload, 5) == []
    await asyncio.wait_for(stopping, 10)
    assert len(held.started) == 2  # the first snapshot's pool and the reload's
    assert held.still_running() == []
    assert _background_tasks() == []


async def test_stop_finishes_the_snapshots_earlier_reloads_left_retiring(
    from_file: Callable[[Path], Awaitable[tuple[GatewayProcess, aiohttp.ClientSession]]],
    upstream_factory: UpstreamFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow(request: web.BaseRequest) -> web.Response:
        arrived.set()
        await release.wait()
        return web.Response(text="finished")

    up = await upstream_factory(slow)
    held = HeldStartups(monkeypatch)
    path = tmp_path / "gateway.yaml"
    _write(path, up, ["/a"])
    process, session = await from_file(path)
    pending = asyncio.create_task(session.get(f"http://127.0.0.1:{process.data_address[1]}/a"))
    await asyncio.wait_for(arrived.wait(), 5)
    _write(path, up, ["/a", "/b"])
    assert await process.reload() == []  # the first snapshot retires when its request ends
    stopping = asyncio.create_task(process.stop())
    await eventually(
        lambda: _refused(process.data_address[1])
    )  # the data listener takes no new connection
    release.set()
    response = await pending
    assert (response.status, await response.text()) == (200, "finished")
    response.release()
    await asyncio.wait_for(stopping, 10)
    assert process._retiring == {}
    assert held.still_running() == []
    assert _background_tasks() == []
