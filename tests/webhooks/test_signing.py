"""Webhook signing, checked against the Standard Webhooks spec; and the SSRF address table."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress

import pytest

from gateway.webhooks.signing import legacy_signature, new_secret, signature, signed_headers
from gateway.webhooks.targets import UnsafeTarget, address_refusal, check_url
from tests.helpers import verify_standard_webhooks


def test_signatures_verify_with_an_independent_implementation() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[6:])) == 32
    body = b'{"id":"evt_1","type":"invoice.created","data":{"n":1}}'
    headers = signed_headers([secret], "msg_2Lc9", 1767225600, body)
    assert headers["webhook-id"] == "msg_2Lc9"
    assert headers["webhook-timestamp"] == "1767225600"
    assert verify_standard_webhooks(secret, headers, body)
    assert not verify_standard_webhooks(secret, headers, body + b" ")
    assert not verify_standard_webhooks(new_secret(), headers, body)


def test_the_spec_example_vector() -> None:
    # The example from the Standard Webhooks specification.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert (
        signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_during_a_rotation_both_secrets_sign() -> None:
    old, new = new_secret(), new_secret()
    headers = signed_headers([new, old], "msg_1", 1, b"{}")
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert verify_standard_webhooks(old, headers, b"{}")
    assert verify_standard_webhooks(new, headers, b"{}")


def test_legacy_signature_is_hex_hmac_of_the_body_keyed_as_configured() -> None:
    secret = new_secret()
    as_shown = "sha256=" + hmac.new(secret.encode(), b"abc", hashlib.sha256).hexdigest()
    decoded = base64.b64decode(secret[6:])
    as_decoded = "sha256=" + hmac.new(decoded, b"abc", hashlib.sha256).hexdigest()
    assert legacy_signature(secret, b"abc", "secret") == as_shown
    assert legacy_signature(secret, b"abc", "decoded") == as_decoded
    assert as_shown != as_decoded


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("93.184.216.34", False),
        ("2606:4700:4700::1111", False),
        ("127.0.0.1", True),
        ("::1", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),  # cloud metadata
        ("fd00:ec2::254", True),
        ("169.254.1.1", True),
        ("fe80::1", True),
        ("100.64.0.1", True),  # carrier-grade NAT
        ("224.0.0.1", True),
        ("ff02::1", True),
        ("0.0.0.0", True),
        ("::", True),
        ("::ffff:127.0.0.1", True),  # IPv4-mapped
        ("::ffff:93.184.216.34", True),
        ("64:ff9b::a00:1", True),  # NAT64 of 10.0.0.1
        ("2002:a00:1::", True),  # 6to4 of 10.0.0.1
        ("fc00::1", True),
        ("240.0.0.1", True),  # reserved
    ],
)
def test_ssrf_address_table(address: str, refused: bool) -> None:
    assert (address_refusal(ipaddress.ip_address(address)) is not None) is refused


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/hook", "must be an http(s) URL with a host"),
        ("https://user:pw@example.com/hook", "must not carry credentials"),
        ("http://127.0.0.1:8080/hook", "points to a loopback address"),
        ("https://[::ffff:10.0.0.1]/hook", "points to an IPv6 address that carries an IPv4 one"),
        ("http://169.254.169.254/latest/meta-data", "points to a cloud metadata address"),
    ],
)
def test_unsafe_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(UnsafeTarget, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_url(url)


def test_names_are_checked_at_connect_time_and_private_targets_can_be_allowed() -> None:
    assert str(check_url("https://hooks.example.com/x")) == "https://hooks.example.com/x"
    assert check_url("http://127.0.0.1:9000/x", allow_private=True).port == 9000
