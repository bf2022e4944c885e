"""The upstream client over TLS: the certificate is verified against the name it was asked for,
by the system's CAs or an upstream's own (tls.ca_file), through the gateway and in its config."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from gateway.config import ConfigError, parse_config
from gateway.dataplane.upstream_http import TargetPool, UpstreamConnectError
from tests.certificates import LOCALHOST_IP, issue, make_ca, self_signed
from tests.conftest import GatewayFactory, LogLines, ServeRaw, make_config
from tests.helpers import eventually

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def _answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)
        await writer.drain()


@pytest.fixture
async def tls_upstream(tmp_path: Path, raw_server: ServeRaw) -> tuple[int, Path]:
    cert_file, key_file = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return await raw_server(_answer_ok, tls=context), cert_file


async def test_a_tls_upstream_with_a_trusted_certificate_answers(
    tls_upstream: tuple[int, Path],
) -> None:
    port, cert_file = tls_upstream
    pool = TargetPool("127.0.0.1", port, ssl=ssl.create_default_context(cafile=str(cert_file)))
    try:
        for _ in range(2):
            response = await pool.request(b"GET", b"/", [])
            assert (response.status, await response.read()) == (200, b"ok")
        assert pool.size == 1  # kept alive over TLS too
    finally:
        await pool.close()


async def test_a_tls_upstream_whose_certificate_is_not_trusted_is_a_connect_error(
    tls_upstream: tuple[int, Path],
) -> None:
    port, _ = tls_upstream
    pool = TargetPool("127.0.0.1", port, ssl=ssl.create_default_context())
    try:
        with pytest.raises(UpstreamConnectError) as caught:
            await pool.request(b"GET", b"/", [])
        assert not caught.value.sent
        assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
    finally:
        await pool.close()


# ---------------------------------------------------------------------------------------------
# A private CA per upstream: tls.ca_file, tls.server_name.


class TlsBackend:
    """An https upstream on 127.0.0.1 that answers every request 200 and keeps their paths."""

    def __init__(self) -> None:
        self.port = 0
        self.paths: list[bytes] = []
        self.sni: list[str | None] = []


@pytest.fixture
def tls_backend(raw_server: ServeRaw) -> Callable[[ssl.SSLContext], Awaitable[TlsBackend]]:
    async def start(context: ssl.SSLContext) -> TlsBackend:
        backend = TlsBackend()

        def sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            backend.sni.append(name)

        context.sni_callback = sni

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                backend.paths.append(head.split(b" ", 2)[1])
                writer.write(OK)
                await writer.drain()

        backend.port = await raw_server(handle, tls=context)
        return backend

    return start


TlsBackends = Callable[[ssl.SSLContext], Awaitable[TlsBackend]]


async def test_an_upstream_signed_by_its_own_ca_is_verified_with_ca_file(
    tmp_path: Path, tls_backend: TlsBackends, gateway_factory: GatewayFactory
) -> None:
    ca = make_ca(tmp_path, "private-ca")
    backend = await tls_backend(issue(ca, tmp_path, LOCALHOST_IP))
    tls = {"ca_file": str(tmp_path / "private-ca.pem")}
    target = f"https://127.0.0.1:{backend.port}"
    health = {"path": "/health", "interval": "50ms"}
    gw = await gateway_factory(
        make_config(
            {"crm": {"targets": [target], "tls": tls, "health": health}},
            [{"path": "/x", "upstream": "crm"}],
        )
    )
    async with gw.session.get(f"{gw.url}/x") as r:
        assert (r.status, await r.read()) == (200, b"ok")
    # The active checks (another HTTP client) trust the same CA.
    await eventually(lambda: backend.paths.count(b"/health") >= 2)


async def test_a_certificate_from_another_ca_is_refused_with_502(
    tmp_path: Path, tls_backend: TlsBackends, gateway_factory: GatewayFactory, logs: LogLines
) -> None:
    make_ca(tmp_path, "trusted-ca")
    other = make_ca(tmp_path, "other-ca")
    backend = await tls_backend(issue(other, tmp_path, LOCALHOST_IP))
    gw = await gateway_factory(
        make_config(
            {
                "crm": {
                    "targets": [f"https://127.0.0.1:{backend.port}"],
                    "tls": {"ca_file": str(tmp_path / "trusted-ca.pem")},
                }
            },
            [{"path": "/x", "upstream": "crm"}],
        )
    )
    async with gw.session.get(f"{gw.url}/x") as r:
        assert r.status == 502
        assert (await r.json())["error"]["code"] == "bad_gateway"
    assert backend.paths == []  # no request went over the unverified connection
    [failed] = logs.events("upstream_failed")
    assert "CERTIFICATE_VERIFY_FAILED" in failed["error"]


async def test_server_name_is_sent_and_verified_instead_of_the_address(
    tmp_path: Path, tls_backend: TlsBackends, gateway_factory: GatewayFactory
) -> None:
    ca = make_ca(tmp_path, "private-ca")
    backend = await tls_backend(issue(ca, tmp_path, [x509.DNSName("crm.internal")]))
    ca_file = str(tmp_path / "private-ca.pem")
    target = f"https://127.0.0.1:{backend.port}"
    named = await gateway_factory(
        make_config(
            {
                "crm": {
                    "targets": [target],
                    "tls": {"ca_file": ca_file, "server_name": "crm.internal"},
                }
            },
            [{"path": "/x", "upstream": "crm"}],
        )
    )
    async with named.session.get(f"{named.url}/x") as r:
        assert r.status == 200
    assert backend.sni == ["crm.internal"]
    unnamed = await gateway_factory(
        make_config(
            {"crm": {"targets": [target], "tls": {"ca_file": ca_file}}},
            [{"path": "/x", "upstream": "crm"}],
        )
    )
    async with unnamed.session.get(f"{unnamed.url}/x") as r:
        assert r.status == 502  # the certificate does not name 127.0.0.1


def config_problems(upstream: dict[str, object]) -> list[str]:
    text = yaml.safe_dump({"upstreams": {"crm": upstream}}).encode()
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="t.yaml", env={})
    return info.value.problems


def test_a_ca_file_that_is_missing_unreadable_or_not_pem_is_a_config_error(
    tmp_path: Path,
) -> None:
    https = ["https://crm.internal"]
    missing = tmp_path / "missing.pem"
    assert config_problems({"targets": https, "tls": {"ca_file": str(missing)}}) == [
        f"upstreams.crm.tls.ca_file: cannot read {str(missing)!r}: No such file or directory"
    ]
    assert config_problems({"targets": https, "tls": {"ca_file": str(tmp_path)}}) == [
        f"upstreams.crm.tls.ca_file: cannot read {str(tmp_path)!r}: Is a directory"
    ]
    text = tmp_path / "notes.txt"
    text.write_text("not a certificate\n")
    assert config_problems({"targets": https, "tls": {"ca_file": str(text)}}) == [
        f"upstreams.crm.tls.ca_file: {str(text)!r} holds no PEM certificate"
        " (-----BEGIN CERTIFICATE-----)"
    ]
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    [problem] = config_problems({"targets": https, "tls": {"ca_file": str(broken)}})
    assert problem.startswith(
        f"upstreams.crm.tls.ca_file: {str(broken)!r} holds a certificate that cannot be read: "
    )


def test_tls_on_an_upstream_without_https_targets_is_refused(tmp_path: Path) -> None:
    make_ca(tmp_path, "ca")
    tls = {"ca_file": str(tmp_path / "ca.pem")}
    assert config_problems({"targets": ["http://crm.internal"], "tls": tls}) == [
        "upstreams.crm.tls: applies to https targets, and this upstream has none"
    ]
    assert config_problems({"builtin": "echo", "tls": tls}) == [
        "upstreams.crm.tls: applies to https targets, and this upstream has none"
    ]
    # A sandbox on https is enough: the settings apply to it.
    text = yaml.safe_dump(
        {
            "upstreams": {
                "crm": {
                    "targets": ["http://crm.internal"],
                    "sandbox": ["https://sandbox.internal"],
                    "tls": tls,
                }
            }
        }
    ).encode()
    loaded = parse_config(text, source="t.yaml", env={})
    upstream_tls = loaded.config.upstreams["crm"].tls
    assert upstream_tls is not None
    assert upstream_tls.ca_pem == (tmp_path / "ca.pem").read_text()


def test_server_name_must_be_a_host_name() -> None:
    assert config_problems({"targets": ["https://10.0.0.5"], "tls": {"server_name": "a b"}}) == [
        "upstreams.crm.tls.server_name: must be a host name like backend.internal (got 'a b')"
    ]
