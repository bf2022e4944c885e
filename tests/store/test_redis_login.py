"""Redis with an ACL user over TLS, as managed Redis services run it: the store logs in, checks
the server's certificate and name, and says clearly what is wrong when it cannot."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography import x509

from gateway.config import StoreConfig
from gateway.config.validation import REDACTED
from gateway.store import StoreError, open_store
from tests.certificates import LOCALHOST_IP, issue, make_ca
from tests.conftest import (
    GatewayFactory,
    RedisServer,
    Upstream,
    _start_redis,
    free_port,
    make_config,
    unique_prefix,
)
from tests.helpers import Admin

USER, PASSWORD = "gateway", "s3cret-redis-password"
WRONG_PASSWORD = "not-the-password"
LIMITED_USER = "gateway-no-info"


@dataclass
class SecureRedis:
    server: RedisServer
    ca_file: Path

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.server.port}/0"

    def store(self, **fields: Any) -> dict[str, Any]:
        """A store section that reaches it: TLS with our CA, the ACL user's login."""
        return {
            "backend": "redis",
            "url": self.url,
            "username": USER,
            "password": PASSWORD,
            "tls_ca_file": str(self.ca_file),
            "key_prefix": unique_prefix(),
            **fields,
        }


def _secure_redis(
    workdir: Path, names: list[x509.GeneralName], *, login: bool = True
) -> SecureRedis:
    """TLS only, its certificate (for ``names``) signed by a CA of the test's own; with
    ``login``, the default user off and one ACL user with a password."""
    ca = make_ca(workdir, "redis-ca")
    issue(ca, workdir, names)
    port = free_port()
    ca_file = workdir / "redis-ca.pem"
    extra = [
        *("--port", "0", "--tls-port", str(port), "--tls-auth-clients", "no"),
        *("--tls-cert-file", str(workdir / "leaf.pem")),
        *("--tls-key-file", str(workdir / "leaf-key.pem")),
        *("--tls-ca-cert-file", str(ca_file)),
    ]
    if login:
        extra += ["--user", "default", "off", "--user", USER, "on", f">{PASSWORD}", "~*", "&*"]
        extra.append("+@all")
        # Least privilege as some operators run it: no INFO (a "dangerous" command).
        extra += ["--user", LIMITED_USER, "on", f">{PASSWORD}", "~*", "&*", "+@all", "-info"]
    # Only to tell when it is up: whether the name matches is the tests' business.
    probe = redis.Redis(
        host="127.0.0.1",
        port=port,
        ssl=True,
        ssl_ca_certs=str(ca_file),
        ssl_check_hostname=False,
        username=USER if login else None,
        password=PASSWORD if login else None,
        socket_connect_timeout=0.2,
    )
    proc = _start_redis(port, workdir, extra=extra, client=probe)
    return SecureRedis(RedisServer("", port, proc, workdir), ca_file)


@pytest.fixture(scope="module")
def secure_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureRedis]:
    server = _secure_redis(tmp_path_factory.mktemp("secure-redis"), LOCALHOST_IP)
    yield server
    server.server.stop()


async def _start(config: dict[str, Any]) -> None:
    store = open_store(StoreConfig.model_validate(config))
    try:
        await store.startup()
    finally:
        await store.shutdown()


async def test_keys_and_limits_work_through_an_acl_user_over_verified_tls(
    gateway_factory: GatewayFactory, upstream: Upstream, secure_redis: SecureRedis
) -> None:
    config = make_config(
        {"app": {"targets": [upstream.url]}},
        [{"path": "/a", "upstream": "app", "auth": "key"}],
        store=secure_redis.store(),
        # The limiter has connections of its own: they log in too.
        plans={"free": {"rate_limit": {"requests": 2, "per": "1m"}}},
    )
    gw = await gateway_factory(config)
    admin = Admin(gw)
    await admin.org("acme")
    key = await admin.key("acme")
    auth = {"Authorization": f"Bearer {key['secret']}"}
    statuses = []
    for _ in range(3):
        async with gw.session.get(f"{gw.url}/a", headers=auth) as r:
            statuses.append(r.status)
    assert statuses == [200, 200, 429]
    # The password is a secret like the admin token: never shown by the admin API.
    status, body = await admin.call("GET", "/admin/config")
    assert status == 200
    assert PASSWORD not in str(body)
    assert body["data"]["config"]["store"]["password"] == REDACTED


async def test_a_user_without_info_can_run_the_store(secure_redis: SecureRedis) -> None:
    """The check that one Redis is not a cluster node asks INFO, which such a user may not."""
    await _start(secure_redis.store(username=LIMITED_USER))


async def test_a_wrong_password_fails_the_start_without_showing_it(
    secure_redis: SecureRedis,
) -> None:
    with pytest.raises(StoreError) as caught:
        await _start(secure_redis.store(password=WRONG_PASSWORD))
    assert WRONG_PASSWORD not in str(caught.value)
    assert "invalid username-password pair" in str(caught.value)


async def test_no_login_is_refused_by_a_server_that_needs_one(secure_redis: SecureRedis) -> None:
    with pytest.raises(StoreError, match="Authentication required"):
        await _start(secure_redis.store(username=None, password=None))


async def test_a_certificate_from_an_unknown_authority_is_refused(
    secure_redis: SecureRedis,
) -> None:
    """Without tls_ca_file the system's CAs are trusted, and none of them signed this one."""
    with pytest.raises(StoreError) as caught:
        await _start(secure_redis.store(tls_ca_file=None))
    assert "certificate verify failed" in str(caught.value)


async def test_a_certificate_for_another_name_is_refused(tmp_path: Path) -> None:
    """SECURITY: a certificate our CA signed for another host must not pass for this one."""
    other = [x509.IPAddress(ipaddress.ip_address("127.0.0.2"))]
    server = _secure_redis(tmp_path, other, login=False)
    try:
        with pytest.raises(StoreError) as caught:
            await _start(server.store(username=None, password=None))
        assert "IP address mismatch" in str(caught.value)
    finally:
        server.server.stop()
