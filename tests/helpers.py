"""Helpers the test modules share: the admin API as a test drives it, waiting for an effect."""

from __future__ import annotations

import asyncio
import hmac
import inspect
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
import standardwebhooks
import yaml
from aiohttp import web

from tests.conftest import (
    ADMIN_TOKEN,
    ROOT,
    GatewayProc,
    RunningGateway,
    Upstream,
    UpstreamHandler,
    make_config,
    wait_until_listening,
)

T = TypeVar("T")
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

_TRUTHY = object()


async def eventually(
    probe: Callable[[], Awaitable[T] | T],
    timeout: float = 5.0,
    *,
    expect: Any = _TRUTHY,
    interval: float = 0.02,
) -> T:
    """Ask ``probe`` again until it answers ``expect`` (by default: anything truthy).

    For effects that show on their own time (another process, a socket, pub/sub, a task of
    the gateway's), never for time that must pass: that is the injected clock's job. Returns
    the last answer; fails with it after ``timeout`` real seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if inspect.isawaitable(got):
            got = await got
        if (got == expect) if expect is not _TRUTHY else got:
            return got
        if time.monotonic() > deadline:
            wanted = "something truthy" if expect is _TRUTHY else repr(expect)
            raise AssertionError(f"still {_short(got)}, not {wanted}, after {timeout}s")
        await asyncio.sleep(interval)


def _short(value: Any, limit: int = 2000) -> str:
    text = repr(value)
    return text if len(text) <= limit else "…" + text[-limit:]


class Admin:
    """The admin API of a gateway: in this process (its own session) or spawned (pass one)."""

    def __init__(
        self, gw: RunningGateway | GatewayProc, session: aiohttp.ClientSession | None = None
    ) -> None:
        self.admin_url = gw.admin_url
        if session is None:
            assert isinstance(gw, RunningGateway), "a spawned gateway's admin API needs a session"
            session = gw.session
        self.session = session

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(
            method, f"{self.admin_url}{path}", json=body, headers=ADMIN
        ) as r:
            return r.status, await r.json()

    async def data(self, method: str, path: str, body: Any = None) -> Any:
        """The answer's data, which must be a success."""
        async with self.session.request(
            method, f"{self.admin_url}{path}", json=body, headers=ADMIN
        ) as r:
            assert r.status < 300, await r.text()
            return (await r.json())["data"]

    async def org(self, slug: str = "acme", plan: str = "free") -> dict[str, Any]:
        status, body = await self.call(
            "POST", "/admin/orgs", {"slug": slug, "name": slug.title(), "plan": plan}
        )
        assert status == 201, body
        org: dict[str, Any] = body["data"]
        return org

    async def key(self, org: str = "acme", **fields: Any) -> dict[str, Any]:
        status, body = await self.call("POST", f"/admin/orgs/{org}/keys", {"name": "k", **fields})
        assert status == 201, body
        key: dict[str, Any] = body["data"]
        return key


def write_config(
    path: Path, upstream: Upstream, routes: Sequence[str] = ("/a",), **extra: Any
) -> None:
    """A gateway's config file, public routes to one upstream: what a reload reads again."""
    config = make_config(
        {"app": {"targets": [upstream.url]}, **extra.pop("upstreams", {})},
        [{"path": p, "upstream": "app"} for p in routes],
        store={"path": str(path.parent / "state.db")},
        **extra,
    )
    path.write_text(yaml.safe_dump(config))


def slow_upstream(delay: float, text: str = "ok") -> UpstreamHandler:
    """An upstream that answers after ``delay`` real seconds: the proxy's own timers are real."""

    async def slow(request: web.BaseRequest) -> web.Response:
        await asyncio.sleep(delay)
        return web.Response(text=text)

    return slow


@dataclass
class Done:
    """What a CLI command did: exit code, stdout, stderr."""

    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        assert self.code == 0, self.err
        return orjson.loads(self.out)

    def assert_one_error_line(self, *expected: str) -> None:
        """Exit 1, nothing on stdout, one `error: …` line on stderr holding each expected part."""
        assert "Traceback" not in self.err, self.err
        assert self.code == 1, (self.code, self.err)
        assert self.out == ""
        assert self.err.startswith("error: ")
        assert self.err.count("\n") == 1, self.err
        assert self.err.endswith("\n")
        for part in expected:
            assert part in self.err, (part, self.err)


def verify_standard_webhooks(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Whether the Standard Webhooks library's own signature of this delivery is among the
    webhook-signature entries (its verify() would also hold the timestamp to the wall clock,
    which tests with an injected clock do not keep)."""
    webhook_id = headers["webhook-id"]
    moment = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
    expected = standardwebhooks.Webhook(secret).sign(webhook_id, moment, body)
    return any(
        hmac.compare_digest(entry, expected) for entry in headers["webhook-signature"].split(" ")
    )


def start_shipped(
    tmp_path: Path, port: int, admin_port: int, run: int, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """`make run` on other ports: the shipped gateway.yaml in a fresh directory; the JSON log
    goes to out-RUN.log, the banner to err-RUN.log."""
    with (
        (tmp_path / f"out-{run}.log").open("wb") as out,
        (tmp_path / f"err-{run}.log").open("wb") as err,
    ):
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(ROOT / "gateway.yaml")],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=err,
        )
    wait_until_listening(port, proc)
    return proc


async def wait_for_text(
    path: Path,
    text: str,
    proc: subprocess.Popen[bytes] | None = None,
    timeout: float = 10.0,
) -> str:
    """The file's content once it holds ``text`` (a banner follows the listener by a moment)."""

    def holds() -> str:
        content = path.read_text()
        assert proc is None or proc.poll() is None, content
        return content if text in content else ""

    try:
        return await eventually(holds, timeout, interval=0.05)
    except AssertionError:
        raise AssertionError(f"{text!r} not in {path.name}: {path.read_text()!r}") from None
