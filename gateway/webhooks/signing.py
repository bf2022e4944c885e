"""Standard Webhooks signatures (webhook-id, webhook-timestamp, webhook-signature: v1,...)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence

from gateway.config.webhooks import LegacyKey

SECRET_PREFIX = "whsec_"  # noqa: S105 - the marker of secrets, not a secret


def new_secret() -> str:
    """``whsec_`` and 32 random bytes in base64, as the Standard Webhooks libraries expect."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    raw = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    return base64.b64decode(raw)


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` under the secret's key bytes."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(
    secrets_in_force: Sequence[str], message_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The three headers; during a secret rotation every secret signs (space-separated)."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(
            signature(secret, message_id, timestamp, body) for secret in secrets_in_force
        ),
    }


def legacy_signature(secret: str, body: bytes, key: LegacyKey) -> str:
    """The older style, ``sha256=<hex HMAC-SHA256 of the body>``.

    key "secret": keyed with the secret string as shown (``whsec_...``), which is how receivers
    of such headers (GitHub, Stripe and the APIs modelled on them) verify; "decoded": with the
    bytes the secret encodes, like the standard signature.
    """
    raw = secret.encode() if key == "secret" else _key(secret)
    return "sha256=" + hmac.new(raw, body, hashlib.sha256).hexdigest()
