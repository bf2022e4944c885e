"""The management CLI as operators run it: a separate process, real sockets, a real gateway.

Network failures and proxies use tiny servers of the test's own on 127.0.0.1, so each case
(refused, reset, silent, not the admin API, a proxy in the environment) is the real thing.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.cli.main import main
from gateway.cli.orgs_keys import cell
from gateway.config import parse_config
from gateway.process.bootstrap import example_path
from tests.conftest import (
    ADMIN_TOKEN,
    ROOT,
    GatewayFactory,
    RunningGateway,
    closed_port_url,
    free_port,
    make_config,
)
from tests.helpers import ADMIN, Done, start_shipped, wait_for_text

PROXY_VARIABLES = (
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
)


def cli_env(**extra: str) -> dict[str, str]:
    """The caller's environment without anything that would steer the CLI, plus the token."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in {p.lower() for p in PROXY_VARIABLES}
        and k.lower() != "no_proxy"
        and not k.startswith("GATEWAY_")
    }
    return {**env, "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN, **extra}


async def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> Done:
    """`python -m gateway ARGS` in its own process; the test's event loop keeps serving."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env if env is not None else cli_env(),
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


# ---------------------------------------------------------------------------------------------
# Tiny TCP servers that misbehave in one exact way each.


@dataclass
class TinyServer:
    url: str
    received: list[bytes] = field(default_factory=list)


Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter, TinyServer], Awaitable[None]]


@pytest.fixture
async def tiny_server() -> AsyncIterator[Callable[[Behaviour], Awaitable[TinyServer]]]:
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(behaviour: Behaviour) -> TinyServer:
        tiny: TinyServer

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            tiny.received.append(head)
            await behaviour(reader, writer, tiny)

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        tiny = TinyServer(f"http://127.0.0.1:{port}")
        return tiny

    yield start
    for writer in writers:
        writer.close()
    for server in servers:
        server.close()
        await server.wait_closed()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0) rather than a FIN: 'connection reset by peer'."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def answer(status: str, content_type: str, body: bytes, extra: str = "") -> Behaviour:
    async def behaviour(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tiny: TinyServer
    ) -> None:
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{extra}"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    return behaviour


async def reset_at_once(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tiny: TinyServer
) -> None:
    reset(writer)


async def reset_mid_answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tiny: TinyServer
) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
        b'{"data": ['
    )
    await writer.drain()
    await asyncio.sleep(0.2)  # the head is read by then; the body is cut off under the reader
    reset(writer)


async def never_answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tiny: TinyServer
) -> None:
    await reader.read()  # until the CLI gives up and hangs up


PROXY_PAGE = b"<html><body><h1>502 Bad Gateway</h1>squid</body></html>"


# ---------------------------------------------------------------------------------------------
# Defect 6: the admin token goes to the admin API only; every failure is one line.


@pytest.fixture
async def gw(gateway_factory: GatewayFactory) -> RunningGateway:
    return await gateway_factory(
        make_config(
            {"app": {"targets": [closed_port_url()]}},
            [{"path": "/v1/{rest:.*}", "upstream": "app", "auth": "key", "scopes": ["read"]}],
            plans={"free": {}, "standard": {}},
            scopes={"implies": {"write": ["read"]}},
        )
    )


async def test_proxy_variables_are_ignored_and_the_token_reaches_only_the_admin_api(
    gw: RunningGateway, tiny_server: Callable[[Behaviour], Awaitable[TinyServer]]
) -> None:
    proxy = await tiny_server(answer("502 Bad Gateway", "text/html", PROXY_PAGE))
    env = cli_env(**dict.fromkeys(PROXY_VARIABLES, proxy.url))

    created = await run_cli(
        "orgs", "create", "acme", "--plan", "free", "--admin-url", gw.admin_url, "--json", env=env
    )
    assert created.json["slug"] == "acme"
    listed = await run_cli("orgs", "list", "--admin-url", gw.admin_url, "--json", env=env)
    assert [o["slug"] for o in listed.json] == ["acme"]

    assert proxy.received == []  # never a byte, so never the token
    async with gw.session.get(f"{gw.admin_url}/admin/orgs/acme", headers=ADMIN) as r:
        assert r.status == 200  # the org is real: the command reached the gateway


async def test_a_redirect_is_not_followed_with_the_token(
    tiny_server: Callable[[Behaviour], Awaitable[TinyServer]],
) -> None:
    elsewhere = await tiny_server(answer("200 OK", "application/json", b'{"data": []}'))
    redirecting = await tiny_server(
        answer(
            "307 Temporary Redirect", "text/plain", b"", f"Location: {elsewhere.url}/admin/orgs\r\n"
        )
    )
    done = await run_cli("orgs", "list", "--admin-url", redirecting.url)
    done.assert_one_error_line(f"HTTP 307 from {redirecting.url}: a redirect (not followed)")
    assert elsewhere.received == []


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("refused", "connection refused (is the gateway running?)"),
        ("reset", "the connection was reset before a complete answer"),
        ("reset mid-answer", "the connection was reset before a complete answer"),
        ("silent, --timeout", "no answer from the admin API at {url} within 0.5s"),
        ("silent, GATEWAY_ADMIN_TIMEOUT", "no answer from the admin API at {url} within 0.5s"),
        ("HTML page", "HTTP 200 from {url}: not an admin API answer"),
        ("proxy error page", "HTTP 502 from {url}: not an admin API answer"),
    ],
)
async def test_network_failures_are_one_line_and_exit_1(
    case: str, expected: str, tiny_server: Callable[[Behaviour], Awaitable[TinyServer]]
) -> None:
    behaviours: dict[str, Behaviour] = {
        "reset": reset_at_once,
        "reset mid-answer": reset_mid_answer,
        "silent, --timeout": never_answer,
        "silent, GATEWAY_ADMIN_TIMEOUT": never_answer,
        "HTML page": answer("200 OK", "text/html", b"<html>Welcome to nginx!</html>"),
        "proxy error page": answer("502 Bad Gateway", "text/html", PROXY_PAGE),
    }
    url = closed_port_url() if case == "refused" else (await tiny_server(behaviours[case])).url
    args = ["keys", "list", "acme", "--admin-url", url]
    env = cli_env()
    if case == "silent, --timeout":
        args += ["--timeout", "0.5"]
    if case == "silent, GATEWAY_ADMIN_TIMEOUT":
        env["GATEWAY_ADMIN_TIMEOUT"] = "0.5"

    done = await run_cli(*args, env=env, timeout=40)

    done.assert_one_error_line(url, expected.format(url=url))
    assert ADMIN_TOKEN not in done.err


async def test_bad_timeouts_are_named() -> None:
    flag = await run_cli("orgs", "list", "--admin-url", closed_port_url(), "--timeout", "soon")
    flag.assert_one_error_line("--timeout: must be a number of seconds > 0 (got 'soon')")
    env = await run_cli(
        "orgs", "list", "--admin-url", closed_port_url(), env=cli_env(GATEWAY_ADMIN_TIMEOUT="0")
    )
    env.assert_one_error_line("GATEWAY_ADMIN_TIMEOUT: must be a number of seconds > 0 (got '0')")
    url = await run_cli("orgs", "list", "--admin-url", "127.0.0.1:9090")
    url.assert_one_error_line("the admin URL must look like http://127.0.0.1:9090")


# ---------------------------------------------------------------------------------------------
# Commands the admin API has: orgs show/update, keys update; tables people read.


InProcess = Callable[..., Awaitable[Done]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> InProcess:
    """The CLI's main() in a thread, for the commands' output (quicker than a process each)."""
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)
    for name in ("GATEWAY_ADMIN_URL", "GATEWAY_ADMIN_TIMEOUT", "GATEWAY_CONFIG"):
        monkeypatch.delenv(name, raising=False)

    async def run(*args: str) -> Done:
        capsys.readouterr()
        code = await asyncio.to_thread(main, list(args))
        out, err = capsys.readouterr()
        return Done(code, out, err)

    return run


async def test_orgs_show_and_update(gw: RunningGateway, cli: InProcess) -> None:
    admin = ("--admin-url", gw.admin_url)
    await cli("orgs", "create", "acme", "--plan", "free", *admin)
    shown = await cli("orgs", "show", "acme", *admin)
    assert shown.code == 0, shown.err
    header, row = shown.out.splitlines()
    assert header.split() == ["ID", "SLUG", "NAME", "PLAN", "CREATEDAT", "ATTRIBUTES"]
    assert row.split()[1:4] == ["acme", "acme", "free"]

    updated = (
        await cli(
            "orgs", "update", "acme", "--name", "Acme Pumps", "--plan", "standard", "--json", *admin
        )
    ).json
    assert (updated["name"], updated["plan"]) == ("Acme Pumps", "standard")
    assert (await cli("orgs", "show", updated["id"], "--json", *admin)).json == updated

    nothing = await cli("orgs", "update", "acme", *admin)
    nothing.assert_one_error_line("nothing to change: give --name, --plan, --attr or --clear-attrs")
    unknown = await cli("orgs", "update", "acme", "--plan", "gold", *admin)
    unknown.assert_one_error_line("plan: unknown plan 'gold'")
    missing = await cli("orgs", "show", "nobody", *admin)
    missing.assert_one_error_line("not_found: No org 'nobody'.")


async def test_keys_update_sets_and_drops_a_rate_limit_override(
    gw: RunningGateway, cli: InProcess
) -> None:
    admin = ("--admin-url", gw.admin_url)
    await cli("orgs", "create", "acme", "--plan", "free", *admin)
    key = (
        await cli(
            "keys",
            "create",
            "acme",
            "--name",
            "zap",
            "--scope",
            "read",
            "--rate-limit",
            "100/1h",
            "--json",
            *admin,
        )
    ).json
    assert key["rateLimit"] == {"requests": 100, "per": 3600.0, "burst": 0}

    updated = (
        await cli(
            "keys",
            "update",
            key["id"],
            "--name",
            "zapier",
            "--rate-limit",
            "300/1m+50",
            "--json",
            *admin,
        )
    ).json
    assert updated["name"] == "zapier"
    assert updated["rateLimit"] == {"requests": 300, "per": 60.0, "burst": 50}
    auth = {"Authorization": f"Bearer {key['secret']}"}
    async with gw.session.get(f"{gw.url}/v1/me", headers=auth) as r:
        assert r.status == 200
        [policy] = (await r.json())["data"]["rateLimit"]["policies"]
    assert policy["limit"] == 350  # the override is in force on the data plane

    shown = await cli("keys", "show", key["id"], *admin)
    assert shown.code == 0, shown.err
    fields = dict(line.split(None, 1) for line in shown.out.splitlines())
    assert fields["name"] == "zapier"
    assert fields["rateLimit"] == "300/1m+50"
    assert fields["allowedIps"] == "-"
    assert fields["revokedAt"] == "-"

    dropped = await cli("keys", "update", key["id"], "--plan-rate-limit", *admin)
    assert dropped.code == 0, dropped.err
    assert re.search(r"^rateLimit\s+-$", dropped.out, re.MULTILINE)
    assert (await cli("keys", "show", key["id"], "--json", *admin)).json["rateLimit"] is None

    nothing = await cli("keys", "update", key["id"], *admin)
    nothing.assert_one_error_line("nothing to change", "scopes, allowed IPs and expiry are fixed")
    bad = await cli("keys", "update", key["id"], "--rate-limit", "lots", *admin)
    bad.assert_one_error_line("--rate-limit: write REQUESTS/PERIOD[+BURST]")
    refused = await cli("keys", "update", key["id"], "--rate-limit", "5/1m", "--name", "", *admin)
    refused.assert_one_error_line("bad_request: ")

    window = await cli(
        "keys", "update", key["id"], "--rate-limit", "5/1m", "--sliding-window", "--json", *admin
    )
    assert window.json["rateLimit"] == {
        "requests": 5,
        "per": 60.0,
        "burst": 0,
        "algorithm": "sliding_window",
    }
    shown = await cli("keys", "show", key["id"], *admin)
    assert re.search(r"^rateLimit\s+5/1m sliding window$", shown.out, re.MULTILINE)
    bursty = await cli("keys", "update", key["id"], "--rate-limit", "5/1m+2", "--sliding-window")
    bursty.assert_one_error_line("--sliding-window: a window has no burst")
    alone = await cli("keys", "update", key["id"], "--sliding-window", *admin)
    alone.assert_one_error_line("--sliding-window: give the limit with --rate-limit")


async def test_attr_options_set_replace_and_clear_attributes(
    gw: RunningGateway, cli: InProcess
) -> None:
    """--attr NAME=VALUE on create and update (an update replaces them all), --clear-attrs,
    and attributes in show, list and --json."""
    admin = ("--admin-url", gw.admin_url)
    org = await cli("orgs", "create", "acme", "--plan", "free", "--attr", "role=viewer", *admin)
    assert org.code == 0, org.err
    assert org.out.splitlines()[1].split()[-1] == "role=viewer"
    key = (
        await cli(
            "keys",
            "create",
            "acme",
            "--name",
            "crm",
            *("--attr", "role=sales-manager", "--attr", "note=a=b c"),
            "--json",
            *admin,
        )
    ).json
    assert key["attributes"] == {"role": "sales-manager", "note": "a=b c"}
    shown = await cli("keys", "show", key["id"], *admin)
    fields = dict(line.split(None, 1) for line in shown.out.splitlines())
    assert fields["attributes"] == "role=sales-manager,note=a=b c"
    listed = await cli("keys", "list", "acme", *admin)
    assert listed.out.splitlines()[0].split()[-1] == "ATTRIBUTES"
    assert listed.out.splitlines()[1].endswith("role=sales-manager,note=a=b c")

    updated = await cli("keys", "update", key["id"], "--attr", "role=admin", "--json", *admin)
    assert updated.json["attributes"] == {"role": "admin"}
    cleared = await cli("keys", "update", key["id"], "--clear-attrs", "--json", *admin)
    assert cleared.json["attributes"] == {}
    org_updated = await cli("orgs", "update", "acme", "--attr", "team=north", "--json", *admin)
    assert org_updated.json["attributes"] == {"team": "north"}
    assert (await cli("orgs", "update", "acme", "--clear-attrs", "--json", *admin)).json[
        "attributes"
    ] == {}

    no_equals = await cli("keys", "update", key["id"], "--attr", "role", *admin)
    no_equals.assert_one_error_line("--attr: write NAME=VALUE, e.g. role=sales-manager")
    twice = await cli("orgs", "update", "acme", "--attr", "a=1", "--attr", "a=2", *admin)
    twice.assert_one_error_line("--attr: a is given twice")
    bad_name = await cli("keys", "create", "acme", "--name", "k", "--attr", "Role=x", *admin)
    bad_name.assert_one_error_line("attributes: 'Role' is not an attribute name")


async def test_keys_rotate_says_when_the_old_key_stops(gw: RunningGateway, cli: InProcess) -> None:
    admin = ("--admin-url", gw.admin_url)
    await cli("orgs", "create", "acme", "--plan", "free", *admin)
    help_text = (await run_cli("keys", "rotate", "--help")).out
    assert "default: 0s" in " ".join(help_text.split())

    async def status(secret: str) -> int:
        async with gw.session.get(
            f"{gw.url}/v1/me", headers={"Authorization": f"Bearer {secret}"}
        ) as r:
            return r.status

    for grace, note in (
        (None, "stops working now (grace 0s; pass --grace 24h to let both keys work for a day)"),
        ("1h", "keeps working for 1h, then stops"),
    ):
        old = (await cli("keys", "create", "acme", "--name", "k", "--json", *admin)).json
        rotated = await cli(
            "keys", "rotate", old["id"], *(["--grace", grace] if grace else []), *admin
        )
        assert rotated.code == 0, rotated.err
        assert f"The old key {old['id']} {note}." in rotated.out
        [new_secret] = re.findall(r"secret \(shown once, store it now\): (\S+)", rotated.out)
        assert await status(new_secret) == 200
        assert await status(old["secret"]) == (401 if grace is None else 200)


def test_tables_read_like_a_person_wrote_them() -> None:
    assert [cell(v) for v in (True, False, None, "", [], ["a", "b"], 3)] == [
        "yes",
        "no",
        "-",
        "-",
        "-",
        "a,b",
        "3",
    ]
    assert cell({"requests": 120, "per": 60.0, "burst": 20}) == "120/1m+20"
    assert cell({"requests": 5, "per": 1.5, "burst": 0}) == "5/1.5s"


# ---------------------------------------------------------------------------------------------
# The first ten minutes: what the gateway prints on start works as printed.


def _config(text: str) -> Any:
    return parse_config(text.encode(), source="t.yaml", env={}).config


def test_the_example_path_is_a_route_the_demo_key_may_call() -> None:
    shipped = parse_config(
        (ROOT / "gateway.yaml").read_bytes(), source="gateway.yaml", env={}
    ).config
    assert example_path(shipped, ["admin"]) == "/v1/echo/hello"
    assert example_path(shipped, ["read"]) == "/v1/echo/hello"
    assert example_path(shipped, ["contacts:read"]) is None  # every route needs read or write

    def routes(*entries: dict[str, Any]) -> Any:
        return _config(
            yaml.safe_dump(
                {"upstreams": {"u": {"targets": ["http://127.0.0.1:1"]}}, "routes": list(entries)}
            )
        )

    numbered = routes(
        {"path": "/status", "upstream": "u", "auth": "none"},
        {"path": "/v1/orders", "upstream": "u", "methods": ["POST"]},
        {"path": "/v1/items/{id:[0-9]+}", "upstream": "u", "scopes": ["items:read"]},
    )
    assert example_path(numbered, ["items:*"]) == "/v1/items/1"
    assert example_path(numbered, ["orders:write"]) is None
    shadowed = routes(
        {"path": "/v1/{rest:.*}", "upstream": "u", "methods": ["GET"], "scopes": ["admin"]},
        {"path": "/v1/things/{id}", "upstream": "u"},
    )
    assert example_path(shadowed, []) is None  # an earlier route takes /v1/things/hello
    assert example_path(shadowed, ["admin"]) == "/v1/hello"


def _start_shipped(tmp_path: Path, port: int, admin_port: int, run: int) -> subprocess.Popen[bytes]:
    """`make run` on non-default ports, in an environment that steers nothing."""
    env = {**cli_env(GATEWAY_PORT=str(port), GATEWAY_ADMIN_PORT=str(admin_port))}
    env.pop("GATEWAY_ADMIN_TOKEN")
    return start_shipped(tmp_path, port, admin_port, run, env)


async def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 30) == 0


async def test_every_command_printed_on_start_works_as_printed(tmp_path: Path) -> None:
    port, admin_port = free_port(), free_port()
    proc = _start_shipped(tmp_path, port, admin_port, 1)
    try:
        first = await wait_for_text(tmp_path / "err-1.log", "Try it:", proc)
        curls = re.findall(r'curl -H "Authorization: Bearer (\S+)" (\S+)', first)
        assert [url for _, url in curls] == [
            f"http://localhost:{port}/v1/me",
            f"http://localhost:{port}/v1/echo/hello",
        ]
        async with aiohttp.ClientSession() as session:
            for key, url in curls:
                async with session.get(url, headers={"Authorization": f"Bearer {key}"}) as r:
                    assert r.status == 200, (url, await r.text())
    finally:
        await _stop(proc)

    proc = _start_shipped(tmp_path, port, admin_port, 2)
    try:
        second = await wait_for_text(tmp_path / "err-2.log", "and try it:", proc)
        assert "Demo org 'demo' exists" in second
        [command] = re.findall(r"^  (\.venv/bin/gateway keys create .*)$", second, re.MULTILINE)
        [curl_url] = re.findall(r'Bearer <the new key>" (\S+)', second)
        assert curl_url == f"http://localhost:{port}/v1/echo/hello"
        # As typed in another terminal: none of the variables the gateway was started with.
        argv = shlex.split(command)
        env = cli_env()
        env.pop("GATEWAY_ADMIN_TOKEN")
        made = await run_cli(*argv[1:], env=env, cwd=tmp_path)
        assert made.code == 0, made.err
        [secret] = re.findall(r"secret \(shown once, store it now\): (\S+)", made.out)
        async with (
            aiohttp.ClientSession() as session,
            session.get(curl_url, headers={"Authorization": f"Bearer {secret}"}) as r,
        ):
            assert r.status == 200, await r.text()
    finally:
        await _stop(proc)


async def test_a_config_without_a_fitting_route_prints_no_example(
    gateway_factory: GatewayFactory, capfd: pytest.CaptureFixture[str]
) -> None:
    await gateway_factory(
        make_config(
            {"app": {"targets": [closed_port_url()]}},
            [{"path": "/v1/{rest:.*}", "upstream": "app", "auth": "key", "scopes": ["billing"]}],
            demo={"org": "demo", "scopes": ["read"]},
        )
    )
    banner = capfd.readouterr().err
    assert "Try it:" in banner
    [url] = re.findall(r"curl .* (http://\S+)", banner)  # the identity endpoint only
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1/me", url)
    assert re.search(r"The console .*: http://127\.0\.0\.1:\d+/\n", banner)


# ---------------------------------------------------------------------------------------------
# `gateway webhooks listen`: the local receiver of the README's walk-through.


async def _listener(port: int, *args: str) -> asyncio.subprocess.Process:
    """`gateway webhooks listen` in its own process, once it says it listens."""
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "gateway", "webhooks", "listen", "--port", str(port), *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    assert proc.stderr is not None
    line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
    assert f"listening for webhook deliveries on http://127.0.0.1:{port}" in line, line
    return proc


async def test_webhooks_listen_prints_each_delivery_and_checks_its_signature(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(
        make_config(
            {},
            [],
            webhooks={"allow_private_targets": True, "poll_interval": "100ms", "jitter": 0},
        )
    )
    admin = ("--admin-url", gw.admin_url)
    await run_cli("orgs", "create", "acme", "--plan", "default", *admin)
    for secret_ok in (True, False):
        port = free_port()
        hooks = f"http://127.0.0.1:{port}/hooks"
        endpoint = (
            await run_cli(
                *("webhooks", "create", "acme", "--url", hooks, "--events", "invoice.created"),
                *("--json", *admin),
            )
        ).json
        secret = endpoint["secret"] if secret_ok else "whsec_" + "A" * 43 + "="
        proc = await _listener(port, "--secret", secret)
        try:
            published = await run_cli(
                *("events", "publish", "acme", "invoice.created", "--data", '{"id": "inv_1"}'),
                *("--json", *admin),
            )
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
        verdict = "ok" if secret_ok else "BAD"
        assert line == (
            f'POST /hooks {published.json["id"]} invoice.created data {{"id":"inv_1"}}'
            f" signature {verdict}\n"
        )
        await run_cli("webhooks", "update", endpoint["id"], "--disable", *admin)
        [delivery] = (
            await run_cli("webhooks", "deliveries", endpoint["id"], "--json", *admin)
        ).json
        assert delivery["lastStatus"] == (200 if secret_ok else 401)


async def test_webhooks_listen_refuses_a_port_in_use_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = await run_cli("webhooks", "listen", "--port", str(port))
    done.assert_one_error_line(f"cannot listen on 127.0.0.1:{port}")
    bad = await run_cli("webhooks", "listen", "--secret", "not base64!")
    bad.assert_one_error_line("--secret: not a webhook secret")


# ---------------------------------------------------------------------------------------------
# make help


def test_make_help_lists_every_target_with_a_description() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = re.findall(r"^([a-z][a-z0-9_-]*):", makefile, re.MULTILINE)
    [phony] = re.findall(r"^\.PHONY: (.*)$", makefile, re.MULTILINE)
    assert sorted(targets) == sorted(phony.split())
    undescribed = [
        t for t in targets if not re.search(rf"^{re.escape(t)}:.*## \S", makefile, re.MULTILINE)
    ]
    assert undescribed == []
    assert re.search(r"^\.DEFAULT_GOAL := help$", makefile, re.MULTILINE)
    # `make` alone prints the list and installs nothing.
    done = subprocess.run(
        ["make", "-s", "--no-print-directory"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    target_lines = done.stdout.partition("\nVariables:")[0]
    listed = re.findall(r"^  ([a-z][a-z0-9_-]*) +\S", target_lines, re.MULTILINE)
    assert sorted(listed) == sorted(targets)
