"""The authorization server's key set as a running gateway follows it: unknown-kid storms, key
rotation without a restart, and outages of the key server (answered 503, never 401)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import FakeClock, GatewayFactory, RunningGateway, Upstream
from tests.helpers import Admin, eventually
from tests.oauth.conftest import AuthServer, Signer, Tokens, jwt_config, rsa_signer, send

UNKNOWN_KID_INTERVAL = 10.0  # at most one refetch per this long for unknown kids
JWKS_REFRESH = 300.0  # jwks_refresh: 5m (jwt_config)


async def start(
    gateway_factory: GatewayFactory, upstream: Upstream, server: AuthServer, clock: FakeClock
) -> RunningGateway:
    gw = await gateway_factory(jwt_config(upstream, server), clock=clock)
    await Admin(gw).org()
    return gw


async def readiness(gw: RunningGateway) -> tuple[int, dict[str, Any]]:
    async with gw.session.get(f"{gw.admin_url}/readyz") as r:
        return r.status, (await r.json())["data"]


async def test_a_storm_of_unknown_kids_fetches_the_key_set_once(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    auth_server: AuthServer,
    tokens: Tokens,
    gateway_clock: FakeClock,
) -> None:
    gw = await start(gateway_factory, upstream, auth_server, gateway_clock)
    assert auth_server.fetches() == 1  # at startup
    stranger = rsa_signer()

    async def storm() -> list[int]:
        wave = [tokens(signer=stranger, headers={"kid": uuid.uuid4().hex}) for _ in range(50)]
        answers = await asyncio.gather(*(send(gw, "/v1/orders", t) for t in wave))
        return [answer.status for answer in answers]

    gateway_clock.now += UNKNOWN_KID_INTERVAL
    assert await storm() == [401] * 50
    assert auth_server.fetches() == 2
    gateway_clock.now += UNKNOWN_KID_INTERVAL - 1
    assert await storm() == [401] * 50
    assert auth_server.fetches() == 2
    gateway_clock.now += 1
    assert await storm() == [401] * 50
    assert auth_server.fetches() == 3
    assert upstream.seen == []
    assert (await send(gw, "/v1/orders", tokens())).status == 200


async def test_keys_rotated_at_the_server_are_followed_without_a_restart(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    auth_server: AuthServer,
    tokens: Tokens,
    rsa_key: Signer,
    gateway_clock: FakeClock,
) -> None:
    gw = await start(gateway_factory, upstream, auth_server, gateway_clock)
    old_token = tokens()
    assert (await send(gw, "/v1/orders", old_token)).status == 200
    new_key = rsa_signer("rsa-2")
    auth_server.publish(rsa_key, new_key)
    # Not within the 10 s after the startup fetch: a rotation comes later than that.
    gateway_clock.now += UNKNOWN_KID_INTERVAL
    new_token = tokens(signer=new_key)
    assert (await send(gw, "/v1/orders", new_token)).status == 200  # at once: kid refetched
    assert auth_server.fetches() == 2
    assert (await send(gw, "/v1/orders", old_token)).status == 200  # both published

    auth_server.publish(new_key)
    assert (await send(gw, "/v1/orders", old_token)).status == 200  # until the refresh
    gateway_clock.now += JWKS_REFRESH + 1

    async def old_status() -> int:
        return (await send(gw, "/v1/orders", old_token)).status

    refused: int = await eventually(old_status, expect=401)
    assert refused == 401
    assert auth_server.fetches() == 3  # the one refresh, not one per refused request
    assert (await send(gw, "/v1/orders", tokens())).status == 401  # a fresh one of the old key
    assert (await send(gw, "/v1/orders", new_token)).status == 200
    assert (await send(gw, "/v1/orders", tokens(signer=new_key))).status == 200


async def test_an_outage_of_the_key_server_keeps_the_fetched_keys_serving(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    auth_server: AuthServer,
    tokens: Tokens,
    gateway_clock: FakeClock,
) -> None:
    gw = await start(gateway_factory, upstream, auth_server, gateway_clock)
    status, ready = await readiness(gw)
    assert (status, ready["oauth"]["jwks"]["ok"], ready["oauth"]["jwks"]["last_error"]) == (
        200,
        True,
        None,
    )
    token = tokens()
    assert (await send(gw, "/v1/orders", token)).status == 200
    auth_server.down = True
    gateway_clock.now += JWKS_REFRESH + 1  # the refresh is due, and fails
    assert (await send(gw, "/v1/orders", token)).status == 200

    async def jwks_state() -> dict[str, Any]:
        state: dict[str, Any] = (await readiness(gw))[1]["oauth"]["jwks"]
        return state

    jwks: dict[str, Any] = await eventually(jwks_state, expect=_Failing())
    assert "503" in jwks["last_error"]
    status, ready = await readiness(gw)
    assert (status, ready["status"]) == (200, "ready")
    # Tokens signed by a key fetched before keep passing, new ones too.
    assert (await send(gw, "/v1/orders", token)).status == 200
    assert (await send(gw, "/v1/orders", tokens(sub="user-2"))).status == 200
    assert len(upstream.seen) == 4


class _Failing:
    """Equal to a key-set state that reports a failure."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, dict) and other["ok"] is False and bool(other["last_error"])


async def test_a_gateway_started_during_an_outage_answers_503_until_the_keys_come(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    auth_server: AuthServer,
    tokens: Tokens,
    gateway_clock: FakeClock,
) -> None:
    auth_server.down = True
    gw = await start(gateway_factory, upstream, auth_server, gateway_clock)
    _, ready = await readiness(gw)
    assert (ready["oauth"]["jwks"]["ok"], ready["oauth"]["jwks"]["keys"]) == (False, 0)
    token = tokens()
    for _ in range(3):
        answer = await send(gw, "/v1/orders", token)
        assert (answer.status, answer.body["error"]["code"]) == (503, "unavailable")
        assert answer.headers["Retry-After"] == "1"
    assert auth_server.fetches() == 1  # not one fetch per request
    auth_server.down = False
    assert (await send(gw, "/v1/orders", token)).status == 503  # the next try is 10 s on
    gateway_clock.now += UNKNOWN_KID_INTERVAL
    assert (await send(gw, "/v1/orders", token)).status == 200
    assert auth_server.fetches() == 2
    _, ready = await readiness(gw)
    assert ready["oauth"]["jwks"]["ok"] is True


async def test_a_reload_keeps_the_fetched_keys_and_a_changed_section_takes_effect(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    auth_server: AuthServer,
    tokens: Tokens,
    gateway_clock: FakeClock,
    tmp_path: Path,
) -> None:
    """A reload during a key-server outage: an unchanged oauth section keeps its keys (tokens
    keep passing); a changed one is applied (a new audience refuses the old tokens)."""
    path = tmp_path / "gateway.yaml"
    config = jwt_config(upstream, auth_server)
    config["store"] = {"backend": "local", "path": str(tmp_path / "state.db")}
    config["admin"]["token_file"] = str(tmp_path / "admin-token")
    path.write_text(yaml.safe_dump(config))
    gw = await gateway_factory(path, clock=gateway_clock)
    await Admin(gw).org()
    token = tokens()
    assert (await send(gw, "/v1/orders", token)).status == 200
    auth_server.down = True
    config["routes"].append({"path": "/v1/new", "upstream": "app", "auth": "oauth"})
    path.write_text(yaml.safe_dump(config))
    assert await gw.process.reload() == []
    assert (await send(gw, "/v1/orders", token)).status == 200
    assert (await send(gw, "/v1/new", token)).status == 200
    auth_server.down = False
    config["oauth"]["audience"] = "https://another-api.example.test"
    path.write_text(yaml.safe_dump(config))
    assert await gw.process.reload() == []
    assert (await send(gw, "/v1/orders", token)).status == 401
    other = tokens(aud="https://another-api.example.test")
    assert (await send(gw, "/v1/orders", other)).status == 200


async def test_a_token_of_an_org_whose_plan_a_reload_removed_is_refused(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    auth_server: AuthServer,
    tokens: Tokens,
    gateway_clock: FakeClock,
    tmp_path: Path,
) -> None:
    """Its keys get 403 api_access_disabled; its tokens must too, not pass with no limits."""
    path = tmp_path / "gateway.yaml"
    config = jwt_config(upstream, auth_server, plans={"free": {}, "gold": {}})
    config["store"] = {"backend": "local", "path": str(tmp_path / "state.db")}
    config["admin"]["token_file"] = str(tmp_path / "admin-token")
    path.write_text(yaml.safe_dump(config))
    gw = await gateway_factory(path, clock=gateway_clock)
    await Admin(gw).org(plan="gold")
    token = tokens()
    assert (await send(gw, "/v1/orders", token)).status == 200
    config["plans"] = {"free": {}}
    path.write_text(yaml.safe_dump(config))
    assert await gw.process.reload() == []
    refused = await send(gw, "/v1/orders", token)
    assert (refused.status, refused.body["error"]["code"]) == (403, "api_access_disabled")
