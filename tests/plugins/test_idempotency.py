"""Idempotency keys through real HTTP: one side effect, replays, conflicts, on both stores."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import (
    GatewayFactory,
    LogLines,
    RunningGateway,
    UpstreamFactory,
    free_port,
    make_config,
)
from tests.helpers import Admin


def creating_upstream(
    delay: float = 0.0, status: int = 201
) -> Callable[[web.BaseRequest], Awaitable[web.Response]]:
    counter = itertools.count(1)

    async def create(request: web.BaseRequest) -> web.Response:
        await request.read()
        await asyncio.sleep(delay)  # real time: duplicates arrive while the first is in flight
        n = next(counter)
        return web.json_response(
            {"id": f"inv_{n}", "created": n},
            status=status,
            headers={
                "Location": f"/v1/invoices/inv_{n}",
                "Set-Cookie": "session=abc",
                "X-Invoice-Number": str(n),
            },
        )

    return create


def idem_config(
    targets: list[str], store: dict[str, Any], mode: str = "optional", **route: Any
) -> dict[str, Any]:
    return make_config(
        {"app": {"targets": targets}},
        [{"path": "/v1/invoices", "upstream": "app", "auth": "key", "idempotency": mode, **route}],
        store=store,
        idempotency={"lock_timeout": "2s"},
    )


class Api:
    def __init__(self, gw: RunningGateway) -> None:
        self.gw = gw
        self.admin = Admin(gw)

    async def key(self, org: str = "acme") -> str:
        if (await self.admin.call("GET", f"/admin/orgs/{org}"))[0] != 200:
            await self.admin.org(org, plan="default")
        return str((await self.admin.key(org))["secret"])

    async def post(
        self, secret: str, body: bytes = b'{"amount": 100}', key: str | None = "ik-1"
    ) -> tuple[int, Any, bytes]:
        headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = key
        async with self.gw.session.post(
            f"{self.gw.url}/v1/invoices", data=body, headers=headers
        ) as r:
            return r.status, r.headers, await r.read()


async def test_concurrent_duplicates_reach_the_upstream_once(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, store_config: dict[str, Any]
) -> None:
    up = await upstream_factory(creating_upstream(delay=0.5))
    gw = await gateway_factory(idem_config([up.url], store_config))
    api = Api(gw)
    secret = await api.key()
    answers = await asyncio.gather(*(api.post(secret) for _ in range(50)))
    assert len(up.seen) == 1
    statuses = sorted(status for status, _, _ in answers)
    assert statuses.count(201) == 1
    assert set(statuses) <= {201, 409}
    conflict = next(a for a in answers if a[0] == 409)
    assert b'"code":"idempotency_in_flight"' in conflict[2]
    assert conflict[1]["Retry-After"] == "1"
    original = next(a for a in answers if a[0] == 201)
    # After completion: the byte-identical answer, marked as a replay.
    status, headers, body = await api.post(secret)
    assert (status, body) == (201, original[2])
    assert headers["Idempotent-Replayed"] == "true"
    assert headers["Location"] == original[1]["Location"] == "/v1/invoices/inv_1"
    assert headers["X-Invoice-Number"] == "1"
    assert headers["Content-Type"] == original[1]["Content-Type"]
    assert "Set-Cookie" not in headers
    assert headers["X-Request-Id"] != original[1]["X-Request-Id"]
    assert "Idempotent-Replayed" not in original[1]
    assert len(up.seen) == 1


async def test_same_key_other_request_is_422_and_leaves_the_record(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, store_config: dict[str, Any]
) -> None:
    up = await upstream_factory(creating_upstream())
    gw = await gateway_factory(idem_config([up.url], store_config))
    api = Api(gw)
    secret = await api.key()
    first = await api.post(secret)
    status, _, body = await api.post(secret, body=b'{"amount": 999}')
    assert status == 422
    assert b'"code":"idempotency_key_reused"' in body
    replay = await api.post(secret)
    assert (replay[0], replay[2]) == (first[0], first[2])
    assert len(up.seen) == 1


async def test_records_are_per_org_and_survive_a_key_rotation(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, store_config: dict[str, Any]
) -> None:
    up = await upstream_factory(creating_upstream())
    gw = await gateway_factory(idem_config([up.url], store_config))
    api = Api(gw)
    acme, acme_again, other = await api.key("acme"), await api.key("acme"), await api.key("other")
    first = await api.post(acme)
    # Another key of the same org (e.g. after a rotation) gets the replay ...
    again = await api.post(acme_again)
    assert (again[0], again[2], again[1]["Idempotent-Replayed"]) == (201, first[2], "true")
    # ... another org's identical key is its own request.
    theirs = await api.post(other)
    assert theirs[0] == 201
    assert "Idempotent-Replayed" not in theirs[1]
    assert len(up.seen) == 2


async def test_required_optional_and_malformed_keys(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, store_config: dict[str, Any]
) -> None:
    up = await upstream_factory(creating_upstream())
    gw = await gateway_factory(idem_config([up.url], store_config, mode="required"))
    api = Api(gw)
    secret = await api.key()
    status, _, body = await api.post(secret, key=None)
    assert status == 400
    assert b'"code":"idempotency_key_required"' in body
    for bad in ("", "x" * 256, "caf\u00e9"):
        headers = {"Authorization": f"Bearer {secret}", "Idempotency-Key": bad}
        async with gw.session.post(f"{gw.url}/v1/invoices", data=b"{}", headers=headers) as r:
            assert r.status == 400
            assert (await r.json())["error"]["code"] == "bad_request"
    assert (await api.post(secret, key='"quoted-key"'))[0] == 201
    assert (await api.post(secret, key="quoted-key"))[1]["Idempotent-Replayed"] == "true"
    assert len(up.seen) == 1
    optional = await gateway_factory(idem_config([up.url], store_config, mode="optional"))
    api2 = Api(optional)
    assert (await api2.post(await api2.key("opt"), key=None))[0] == 201


async def test_upstream_not_reached_stores_nothing(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, store_config: dict[str, Any]
) -> None:
    port = free_port()
    gw = await gateway_factory(idem_config([f"http://127.0.0.1:{port}"], store_config))
    api = Api(gw)
    secret = await api.key()
    assert (await api.post(secret))[0] == 502
    runner = web.ServerRunner(web.Server(creating_upstream()), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        status, headers, _ = await api.post(secret)  # the retry proceeds: not 409, not a replay
        assert status == 201
        assert "Idempotent-Replayed" not in headers
    finally:
        await runner.cleanup()


async def test_upstream_5xx_is_kept_unless_the_route_says_not(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, store_config: dict[str, Any]
) -> None:
    failing = await upstream_factory(creating_upstream(status=500))
    gw = await gateway_factory(idem_config([failing.url], store_config))
    api = Api(gw)
    secret = await api.key()
    await api.post(secret)
    replay = await api.post(secret)
    assert (replay[0], replay[1]["Idempotent-Replayed"]) == (500, "true")
    assert len(failing.seen) == 1
    again = await upstream_factory(creating_upstream(status=503))
    gw2 = await gateway_factory(idem_config([again.url], store_config, idempotency_keep_5xx=False))
    api2 = Api(gw2)
    secret2 = await api2.key("retry5xx")
    assert [(await api2.post(secret2))[0] for _ in range(2)] == [503, 503]
    assert len(again.seen) == 2


async def test_too_large_responses_are_not_replayed_nor_repeated(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, store_config: dict[str, Any]
) -> None:
    async def big(request: web.BaseRequest) -> web.Response:
        await request.read()
        return web.Response(status=201, body=b"x" * 5000)

    up = await upstream_factory(big)
    config = idem_config([up.url], store_config)
    config["idempotency"]["max_response_body"] = 1000
    gw = await gateway_factory(config)
    api = Api(gw)
    secret = await api.key()
    assert (await api.post(secret))[0] == 201
    status, _, body = await api.post(secret)
    assert status == 409
    assert b'"code":"idempotency_response_not_stored"' in body
    assert b"status 201" in body
    assert len(up.seen) == 1


async def test_outcomes_are_counted_and_logged(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, logs: LogLines
) -> None:
    up = await upstream_factory(creating_upstream())
    gw = await gateway_factory(idem_config([up.url], {}))
    api = Api(gw)
    secret = await api.key()
    await api.post(secret)
    await api.post(secret)
    await api.post(secret, body=b"{}")
    text = await gw.metrics()
    for outcome in ("stored", "replayed", "mismatch"):
        assert f'gateway_idempotency_total{{outcome="{outcome}"}} 1.0' in text
    assert [line.get("idempotency") for line in logs.events("request")] == [
        "stored",
        "replayed",
        "mismatch",
    ]


async def test_an_answer_cut_off_midway_is_never_followed_by_a_second_write(
    gateway_factory: GatewayFactory, store_config: dict[str, Any]
) -> None:
    writes = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        writes.append(1)
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 200000\r\n\r\n" + b"x" * 1000)
        await writer.drain()
        writer.transport.abort()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        gw = await gateway_factory(idem_config([f"http://127.0.0.1:{port}"], store_config))
        api = Api(gw)
        secret = await api.key()
        with pytest.raises(aiohttp.ClientPayloadError):  # the client sees a truncated body
            await api.post(secret)
        status, _, body = await api.post(secret)
        assert status == 409
        assert b'"code":"idempotency_outcome_unknown"' in body
        assert len(writes) == 1
    finally:
        server.close()


async def test_test_and_live_keys_never_share_a_record(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, store_config: dict[str, Any]
) -> None:
    up = await upstream_factory(creating_upstream())
    gw = await gateway_factory(idem_config([up.url], store_config))
    api = Api(gw)
    live = await api.key()
    test = (await api.admin.key(name="t", environment="test"))["secret"]
    first = await api.post(test)
    second = await api.post(live)
    assert (first[0], second[0]) == (201, 201)
    assert "Idempotent-Replayed" not in second[1]
    assert len(up.seen) == 2


async def test_identity_headers_echoed_by_the_backend_are_not_replayed(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, store_config: dict[str, Any]
) -> None:
    async def echoing(request: web.BaseRequest) -> web.Response:
        await request.read()
        return web.json_response(
            {},
            status=201,
            headers={"X-Key-Environment": request.headers["X-Key-Environment"], "X-Invoice": "1"},
        )

    up = await upstream_factory(echoing)
    gw = await gateway_factory(idem_config([up.url], store_config))
    api = Api(gw)
    secret = await api.key()
    await api.post(secret)
    status, headers, _ = await api.post(secret)
    assert (status, headers["Idempotent-Replayed"], headers["X-Invoice"]) == (201, "true", "1")
    assert "X-Key-Environment" not in headers
