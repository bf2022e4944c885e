"""The upstream client over TLS: the certificate is verified against the name it was asked for."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.dataplane.upstream_http import TargetPool, UpstreamConnectError

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own authority, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "upstream test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture
async def tls_upstream(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    cert_file, key_file = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(OK)
                await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    yield server.sockets[0].getsockname()[1], cert_file
    server.close()
    for writer in writers:
        writer.transport.abort()
    await server.wait_closed()


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
