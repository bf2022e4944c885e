"""A config file that cannot be read is one clear problem, never a traceback: from the loader,
``gateway check``, ``gateway run`` and a reload (the admin API and SIGHUP)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from gateway.config import ConfigError, load_config, parse_config
from tests.conftest import ADMIN_TOKEN, GatewayFactory, Spawn, Upstream
from tests.helpers import ADMIN, eventually, write_config

GATEWAY = Path(sys.executable).parent / "gateway"  # the installed command, as operators run it

NESTED = "line 1, column 65: nested deeper than 64 levels"
# "Billion laughs": nine references to nine references... 9**9 strings once expanded.
LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)

# (file contents, the one problem reported)
UNREADABLE: dict[str, tuple[bytes, str]] = {
    "deep-sequence": (b"[" * 100_000, NESTED),
    "deep-flow-mapping": (b"{a: " * 100_000, "line 1, column 254: nested deeper than 64 levels"),
    "deep-block-mapping": (
        "".join(" " * i + "k:\n" for i in range(200)).encode(),
        "line 64, column 64: nested deeper than 64 levels",
    ),
    "billion-laughs": (
        LAUGHS.encode(),
        "line 5, column 4: holds more than 50000 values (aliases expanded)",
    ),
    "alias-loop": (
        b"routes: &r [*r]\n",
        "line 1, column 9: an alias refers to the value that holds it",
    ),
    "invalid-utf-8": (
        b"workers: \xc3\x28\n",
        "the file is not utf-8 text (byte 0xc3 at offset 9: invalid continuation byte)",
    ),
    "binary": (
        b"\x7fELF\x02\x01\x01\x00\x00",
        "the file holds character #x007f at offset 0, which YAML does not allow;"
        " is it a text file?",
    ),
    "too-large": (
        b"# " + b"x" * (1024 * 1024) + b"\n",
        "the file is larger than 1MiB; is it a config?",
    ),
    "a-list-key": (
        b"[a, b]: 1\n",
        "line 1, column 1: a key must be a plain value, not a list or mapping",
    ),
    "a-13th-month": (
        b"routes: [{deprecation: {deprecated_at: 2026-13-01}}]\n",
        "line 1, column 40: cannot read this value: month must be in 1..12",
    ),
}
# Unreadable files whose problem the code before these checks reported with a traceback instead.
CRASHED_BEFORE = ("deep-sequence", "deep-flow-mapping", "deep-block-mapping", "alias-loop")


@pytest.mark.parametrize("name", list(UNREADABLE))
def test_an_unreadable_file_is_one_problem(name: str) -> None:
    content, expected = UNREADABLE[name]
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        parse_config(content, source="t.yaml", env={})
    assert info.value.problems == [expected]
    assert time.monotonic() - started < 10  # refused early, not after expanding it


def test_a_key_may_override_a_merged_one_but_not_repeat_a_written_one() -> None:
    text = b"""
upstreams:
  crm:
    targets: [http://127.0.0.1:1]
    timeouts: {<<: {connect: 1s, read: 5s}, read: 9s}
"""
    timeouts = parse_config(text, source="t.yaml", env={}).config.upstreams["crm"].timeouts
    assert (timeouts.connect, timeouts.read) == (1.0, 9.0)
    with pytest.raises(ConfigError) as info:
        parse_config(b"workers: 1\nlisten: {port: 1}\nworkers: 2\n", source="t.yaml", env={})
    assert info.value.problems == ["line 3, column 1: duplicate key 'workers'"]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda tmp: tmp, "cannot read the file: Is a directory"),
        (lambda tmp: tmp / "missing.yaml", "cannot read the file: No such file or directory"),
        (lambda tmp: tmp / "file" / "gateway.yaml", "cannot read the file: Not a directory"),
        (lambda tmp: tmp / ("x" * 300), "cannot read the file: File name too long"),
    ],
    ids=["directory", "missing", "under-a-file", "name-too-long"],
)
def test_a_path_that_is_not_a_readable_file_is_one_problem(
    tmp_path: Path, make: Callable[[Path], Path], expected: str
) -> None:
    (tmp_path / "file").write_text("workers: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(make(tmp_path))
    assert info.value.problems == [expected]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_a_file_without_read_permission_is_one_problem(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("workers: 1\n")
    path.chmod(0)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ["cannot read the file: Permission denied"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GATEWAY), *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("name", [*CRASHED_BEFORE, "billion-laughs", "invalid-utf-8", "binary"])
def test_check_reports_an_unreadable_file_in_one_line_and_exits_1(
    tmp_path: Path, name: str
) -> None:
    content, expected = UNREADABLE[name]
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(content)
    result = run("check", "-c", str(path))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [f"{path}: 1 problem(s)", f"  {expected}"]


def test_check_reports_a_directory_and_a_nan_timeout_by_name(tmp_path: Path) -> None:
    result = run("check", "-c", str(tmp_path))
    assert (result.returncode, result.stderr.splitlines()) == (
        1,
        [f"{tmp_path}: 1 problem(s)", "  cannot read the file: Is a directory"],
    )
    path = tmp_path / "nan.yaml"
    path.write_text(
        "upstreams:\n  crm:\n    targets: ['http://127.0.0.1:1']\n"
        "    timeouts: {read: .nan, connect: .inf}\n"
    )
    result = run("check", "-c", str(path))
    assert result.returncode == 1
    assert result.stderr.splitlines()[1:] == [
        "  upstreams.crm.timeouts.connect: must be a finite duration (got inf)",
        "  upstreams.crm.timeouts.read: must be a finite duration (got nan)",
    ]


def test_check_prints_a_key_with_control_characters_on_one_plain_line(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text('"\\e[2J\\nlisten": 1\n')
    result = run("check", "-c", str(path))
    assert result.returncode == 1
    assert result.stderr.splitlines()[1].startswith("  \\x1b[2J\\x0alisten: unknown key")


def test_run_reports_an_unreadable_file_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_bytes(UNREADABLE["deep-sequence"][0])
    result = run("run", "-c", str(path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"{path}: 1 problem(s)", f"  {NESTED}"]


# ---------------------------------------------------------------------------------------------
# Reloads: the running config keeps serving, the problem is reported.


@pytest.mark.parametrize("name", [*CRASHED_BEFORE, "billion-laughs"])
async def test_a_reload_of_an_unreadable_file_is_refused_with_its_problem(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    tmp_path: Path,
    name: str,
) -> None:
    path = tmp_path / "gateway.yaml"
    write_config(path, upstream)
    process = (await gateway_factory(path)).process
    digest = process.loaded.digest
    content, expected = UNREADABLE[name]
    path.write_bytes(content)
    assert await process.reload() == [expected]
    async with aiohttp.ClientSession() as session:
        admin = f"http://127.0.0.1:{process.admin_address[1]}/admin/reload"
        async with session.post(admin, headers=ADMIN) as r:
            assert r.status == 400
            body = await r.json()
        assert body["error"]["code"] == "config_invalid"
        assert body["error"]["message"] == expected
        async with session.get(f"http://127.0.0.1:{process.data_address[1]}/a") as r:
            assert r.status == 200  # the running config serves on
    assert process.loaded.digest == digest


async def test_a_reload_refuses_a_nan_timeout_by_name(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.yaml"
    write_config(path, upstream)
    process = (await gateway_factory(path)).process
    nan = {"targets": [upstream.url], "timeouts": {"read": float("nan")}}
    write_config(path, upstream, upstreams={"app": nan})
    assert await process.reload() == [
        "upstreams.app.timeouts.read: must be a finite duration (got nan)"
    ]


async def test_sighup_with_an_unreadable_file_logs_the_problem_and_serves_on(
    spawn_gateway: Spawn, upstream: Upstream, tmp_path: Path
) -> None:
    gp = spawn_gateway(
        {
            "admin": {"token": ADMIN_TOKEN},
            "upstreams": {"app": {"targets": [upstream.url]}},
            "routes": [{"path": "/a", "upstream": "app", "auth": "none"}],
        }
    )
    [path] = sorted(tmp_path.glob("gateway-*.yaml"))
    failed = '"event":"config_reload_failed"'
    for reloads, name in enumerate(("deep-block-mapping", "alias-loop"), 1):
        path.write_bytes(UNREADABLE[name][0])
        gp.proc.send_signal(signal.SIGHUP)
        await eventually(lambda n=reloads: gp.log_text().count(failed) >= n, 10, interval=0.05)
    log = gp.log_text()
    assert "nested deeper than 64 levels" in log
    assert "an alias refers to the value that holds it" in log
    assert "Traceback" not in log
    assert "never retrieved" not in log
    async with aiohttp.ClientSession() as session, session.get(f"{gp.url}/a") as r:
        assert r.status == 200
