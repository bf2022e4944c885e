"""The state directory holds secrets: 0700, and every file in it 0600, whatever the umask."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.store.local import LocalStore
from tests.conftest import GatewayFactory, LogLines, Spawn, make_config

PLAN = {"rate_limit": {"requests": 10, "per": "1m"}, "quota": {"requests": 100, "per": "day"}}
ROUTE = {"path": "/v1/{rest:.*}", "upstream": "demo", "auth": "key", "idempotency": "optional"}


@pytest.fixture(params=[0o022, 0o000], ids=["umask-022", "umask-000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The process umask while the gateway makes its files (a child process inherits it)."""
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def modes(root: Path) -> dict[str, str]:
    """Every path under root (root itself as '.') -> its permission bits in octal."""
    found = {".": f"{stat.S_IMODE(root.stat().st_mode):04o}"}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = f"{stat.S_IMODE(path.lstat().st_mode):04o}"
    return found


def assert_owner_only(root: Path, expected_files: set[str]) -> None:
    found = modes(root)
    assert expected_files <= set(found), found  # the secrets are there: nothing vacuous
    for name, mode in found.items():
        want = "0700" if (root / name).is_dir() else "0600"
        assert mode == want, f"{name} is {mode}, want {want}: {found}"


async def use_everything(
    session: aiohttp.ClientSession, url: str, admin_url: str, token: str
) -> None:
    """An org, a key, a counted request and a stored idempotent answer."""
    admin = {"Authorization": f"Bearer {token}"}
    async with session.post(
        f"{admin_url}/admin/orgs", json={"slug": "acme", "name": "Acme", "plan": "p"}, headers=admin
    ) as r:
        assert r.status == 201, await r.text()
    async with session.post(
        f"{admin_url}/admin/orgs/acme/keys", json={"name": "k"}, headers=admin
    ) as r:
        assert r.status == 201, await r.text()
        secret = (await r.json())["data"]["secret"]
    headers = {"Authorization": f"Bearer {secret}", "Idempotency-Key": "order-1"}
    for replayed in ("", "true"):
        async with session.post(f"{url}/v1/orders", json={"n": 1}, headers=headers) as r:
            assert r.status == 200, await r.text()
            assert r.headers.get("Idempotent-Replayed", "") == replayed


async def test_state_files_of_an_in_process_gateway_are_owner_only(
    gateway_factory: GatewayFactory, tmp_path: Path, umask: int
) -> None:
    state = tmp_path / "state"  # made by the gateway
    gw = await gateway_factory(
        make_config(
            {"demo": {"builtin": "echo"}},
            [ROUTE],
            store={"backend": "local", "path": str(state / "state.db")},
            admin={"token": None, "token_file": str(state / "admin-token")},
            plans={"p": PLAN},
        )
    )
    token = (state / "admin-token").read_text().strip()
    await use_everything(gw.session, gw.url, gw.admin_url, token)
    assert_owner_only(state, {"state.db", "state.db-wal", "state.db-shm", "admin-token"})
    await gw.session.close()
    await gw.process.stop()  # saves the rate-limit counts
    with sqlite3.connect(state / "state.db") as db:
        assert db.execute("SELECT count(*) FROM limit_state").fetchone()[0] > 0
    db.close()
    assert_owner_only(state, {"state.db", "admin-token"})


@pytest.mark.slow
async def test_state_files_of_gateway_run_are_owner_only(
    spawn_gateway: Spawn, tmp_path: Path, umask: int
) -> None:
    """`gateway run` with the default .gateway directory in its working directory."""
    config: dict[str, Any] = {
        "upstreams": {"demo": {"builtin": "echo"}},
        "routes": [ROUTE],
        "plans": {"p": PLAN},
    }
    gp = spawn_gateway(config)
    state = tmp_path / ".gateway"
    token = (state / "admin-token").read_text().strip()
    async with aiohttp.ClientSession() as session:
        await use_everything(session, gp.url, gp.admin_url, token)
    assert_owner_only(state, {"state.db", "state.db-wal", "state.db-shm", "admin-token"})
    gp.proc.terminate()
    assert gp.proc.wait(timeout=15) == 0, gp.log_text()
    assert_owner_only(state, {"state.db", "admin-token"})


async def test_loose_files_left_by_an_older_version_are_tightened_and_reported(
    tmp_path: Path, logs: LogLines
) -> None:
    """Files of ours become 0600; a directory that already existed is reported, not changed
    (it may be shared, like the working directory)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    old = os.umask(0o022)
    try:
        db = sqlite3.connect(shared / "state.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (x)")
        # Left open: the -wal and -shm files stay, as after a crash.
        assert modes(shared)["state.db-wal"] == "0644"
    finally:
        os.umask(old)
    store = LocalStore(str(shared / "state.db"))
    await store.startup()
    try:
        found = modes(shared)
        assert found == {
            ".": "0755",
            "state.db": "0600",
            "state.db-wal": "0600",
            "state.db-shm": "0600",
        }
    finally:
        await store.shutdown()
        db.close()
    warnings = {
        (e["event"], e["path"], e["mode"]) for e in logs.events() if e["level"] == "warning"
    }
    assert warnings == {
        ("state_dir_not_private", str(shared), "0755"),
        ("state_file_tightened", str(shared / "state.db"), "0644"),
        ("state_file_tightened", str(shared / "state.db-wal"), "0644"),
        ("state_file_tightened", str(shared / "state.db-shm"), "0644"),
    }
