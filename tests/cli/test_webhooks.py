"""``gateway webhooks …`` and ``gateway events publish`` against an in-process gateway."""

from __future__ import annotations

import asyncio
import re
import sys

import orjson
import pytest
from aiohttp import web

from gateway.cli.main import main
from tests.conftest import (
    ADMIN_TOKEN,
    GatewayFactory,
    RunningGateway,
    Upstream,
    UpstreamFactory,
    make_config,
)
from tests.helpers import Done, eventually


class Cli:
    """The CLI's main() in a thread (it is synchronous), so the gateway's loop keeps serving."""

    def __init__(self, gw: RunningGateway, capsys: pytest.CaptureFixture[str]) -> None:
        self.admin_url = gw.admin_url
        self.capsys = capsys

    async def __call__(self, *args: str) -> Done:
        self.capsys.readouterr()
        code = await asyncio.to_thread(main, [*args, "--admin-url", self.admin_url])
        out, err = self.capsys.readouterr()
        assert "Traceback" not in err
        return Done(code, out, err)

    async def ok(self, *args: str) -> Done:
        run = await self(*args)
        assert run.code == 0, run.err
        return run


@pytest.fixture
async def cli(
    gateway_factory: GatewayFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Cli:
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.delenv("GATEWAY_ADMIN_URL", raising=False)
    gw = await gateway_factory(
        make_config(
            {},
            [],
            plans={"free": {"webhook_endpoints": 2}},
            webhooks={"allow_private_targets": True, "jitter": 0, "poll_interval": "100ms"},
        )
    )
    cli = Cli(gw, capsys)
    await cli.ok("orgs", "create", "acme", "--plan", "free")
    return cli


async def test_endpoint_lifecycle_from_the_cli(cli: Cli, upstream: Upstream) -> None:
    url = f"{upstream.url}/hooks"
    created = await cli.ok(
        "webhooks",
        "create",
        "acme",
        "--url",
        url,
        "--events",
        "invoice.created,invoice.paid",
        "--event",
        "key.created",
        "--description",
        "billing",
    )
    header, row = created.out.splitlines()[:2]
    assert header.split() == [
        "ID",
        "URL",
        "EVENTS",
        "STATUS",
        "DISABLEDREASON",
        "SECRETROTATING",
        "DESCRIPTION",
        "CREATEDAT",
    ]
    [endpoint_id] = re.findall(r"\bwh_\w+", row)
    assert row.split()[1:7] == [
        url,
        "invoice.created,invoice.paid,key.created",
        "enabled",
        "-",
        "no",
        "billing",
    ]
    [secret] = re.findall(r"secret \(shown once, store it now\): (whsec_\S+)", created.out)

    listed = (await cli.ok("webhooks", "list", "acme", "--json")).json
    assert [e["id"] for e in listed] == [endpoint_id]
    assert "secret" not in listed[0]
    assert listed[0]["events"] == ["invoice.created", "invoice.paid", "key.created"]

    shown = await cli.ok("webhooks", "show", endpoint_id)
    assert endpoint_id in shown.out
    assert "whsec_" not in shown.out

    disabled = (await cli.ok("webhooks", "update", endpoint_id, "--disable", "--json")).json
    assert disabled["status"] == "disabled"
    assert disabled["disabledReason"] == "disabled by an admin"
    enabled = (
        await cli.ok(
            "webhooks", "update", endpoint_id, "--enable", "--events", "*", "--description", ""
        )
    ).out
    assert enabled.splitlines()[1].split()[1:7] == [url, "*", "enabled", "-", "no", "-"]

    rotated = (await cli.ok("webhooks", "rotate", endpoint_id, "--overlap", "1h", "--json")).json
    assert rotated["secret"].startswith("whsec_")
    assert rotated["secret"] != secret
    assert rotated["secretRotating"] is True
    rotated_text = await cli.ok("webhooks", "rotate", endpoint_id)
    assert "secret (shown once, store it now): whsec_" in rotated_text.out

    ping = (await cli.ok("webhooks", "ping", endpoint_id, "--json")).json
    assert ping["eventId"].startswith("evt_")

    async def delivered() -> bool:
        found = (await cli.ok("webhooks", "deliveries", endpoint_id, "--json")).json
        return bool(found and found[0]["status"] == "succeeded")

    await eventually(delivered)
    [delivery] = (await cli.ok("webhooks", "deliveries", endpoint_id, "--json")).json
    assert delivery["eventId"] == ping["eventId"]
    assert delivery["eventType"] == "webhook.ping"
    assert delivery["attempts"] == 1
    assert delivery["lastStatus"] == 200
    table = (await cli.ok("webhooks", "deliveries", endpoint_id)).out.splitlines()
    assert table[0].split() == [
        "ID",
        "EVENTTYPE",
        "STATUS",
        "ATTEMPTS",
        "LASTSTATUS",
        "NEXTATTEMPTAT",
        "CREATEDAT",
    ]
    assert table[1].split()[:6] == [delivery["id"], "webhook.ping", "succeeded", "1", "200", "-"]

    retried = (await cli.ok("webhooks", "retry", delivery["id"], "--json")).json
    assert retried["id"] == delivery["id"]
    assert retried["status"] in ("pending", "delivering")

    async def attempted_again() -> bool:
        found = (await cli.ok("webhooks", "deliveries", endpoint_id, "--json")).json
        return bool(found[0]["attempts"] == 2 and found[0]["status"] == "succeeded")

    await eventually(attempted_again)
    assert [s.raw_path for s in upstream.seen] == ["/hooks", "/hooks"]

    missing = await cli("webhooks", "retry", "dlv_nope")
    assert missing.code == 1
    assert missing.err == "error: not_found: No delivery 'dlv_nope'.\n"

    deleted = await cli.ok("webhooks", "delete", endpoint_id)
    assert deleted.out.splitlines()[1].split() == [endpoint_id, "yes"]
    gone = await cli("webhooks", "show", endpoint_id)
    assert gone.code == 1
    assert gone.err.startswith("error: not_found: ")
    assert (await cli.ok("webhooks", "list", "acme", "--json")).json == []


async def test_events_publish_reaches_subscribed_endpoints(
    cli: Cli, upstream_factory: UpstreamFactory
) -> None:
    bodies: list[bytes] = []

    async def receive(request: web.BaseRequest) -> web.StreamResponse:
        bodies.append(await request.read())
        return web.Response(text="ok")

    receiver = await upstream_factory(receive)
    url = f"{receiver.url}/hooks"
    await cli.ok("webhooks", "create", "acme", "--url", url, "--event", "invoice.created")
    published = (
        await cli.ok("events", "publish", "acme", "invoice.created", "--data", '{"n": 1}', "--json")
    ).json
    assert published["id"].startswith("evt_")

    await eventually(lambda: bodies)
    event = orjson.loads(bodies[0])
    assert (event["id"], event["type"], event["data"]) == (
        published["id"],
        "invoice.created",
        {"n": 1},
    )
    text = await cli.ok("events", "publish", "acme", "invoice.paid")  # nobody listens: fine
    assert re.fullmatch(r"ID\nevt_\w+\n", text.out)

    bad = await cli("events", "publish", "acme", "invoice.created", "--data", "{n: 1}")
    assert bad.code == 1
    assert bad.err.startswith("error: --data is not valid JSON: ")
    unknown = await cli("events", "publish", "nobody", "invoice.created")
    assert unknown.code == 1
    assert unknown.err == "error: not_found: No org 'nobody'.\n"


async def test_bad_input_is_an_error_not_a_traceback(cli: Cli, upstream: Upstream) -> None:
    no_events = await cli("webhooks", "create", "acme", "--url", upstream.url)
    assert no_events.code == 1
    assert no_events.err.startswith("error: name the events: ")
    nothing = await cli("webhooks", "update", "wh_x")
    assert nothing.code == 1
    assert nothing.err.startswith("error: nothing to change: ")
    refused = await cli("webhooks", "create", "acme", "--url", "ftp://x", "--events", "a")
    assert refused.code == 1
    assert refused.err.startswith("error: ")
    for _ in range(2):
        await cli.ok("webhooks", "create", "acme", "--url", upstream.url, "--events", "*")
    capped = await cli("webhooks", "create", "acme", "--url", upstream.url, "--events", "*")
    assert capped.code == 1
    assert capped.err.startswith("error: plan_limit_reached: ")


async def test_python_m_gateway_webhooks_json(cli: Cli, upstream: Upstream) -> None:
    """As an operator runs it: a separate process, the token from the environment."""
    await cli.ok("webhooks", "create", "acme", "--url", upstream.url, "--events", "*")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "webhooks",
        "list",
        "acme",
        "--admin-url",
        cli.admin_url,
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    [endpoint] = orjson.loads(out)
    assert endpoint["url"] == upstream.url
    assert endpoint["events"] == ["*"]
