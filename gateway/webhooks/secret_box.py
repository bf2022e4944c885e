"""Endpoint secrets encrypted at rest (AES-256-GCM), when ``webhooks.secret_key`` is set.

The gateway must keep each ``whsec_`` secret to sign with it, so unlike API keys it cannot
store a hash. With a secret key configured, the store holds only ciphertext; a copy of the
database (or of Redis) does not let anyone forge deliveries.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEALED = "enc:v1:"
_INFO = b"gateway webhook endpoint secrets v1"


class SecretUnavailable(Exception):
    """A stored secret this process cannot decrypt (no key, or another key)."""


class SecretBox:
    def __init__(self, key: str | None) -> None:
        self._aead: AESGCM | None = None
        if key:
            derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
                key.encode()
            )
            self._aead = AESGCM(derived)

    def seal(self, secret: str) -> str:
        """What the store keeps: the secret encrypted, or as is without a key."""
        if self._aead is None:
            return secret
        nonce = os.urandom(12)
        sealed = nonce + self._aead.encrypt(nonce, secret.encode(), _INFO)
        return SEALED + base64.b64encode(sealed).decode()

    def open(self, stored: str) -> str:
        """The secret itself; one stored before encryption was turned on is read as is."""
        if not stored.startswith(SEALED):
            return stored
        if self._aead is None:
            raise SecretUnavailable("the secret is encrypted and webhooks.secret_key is not set")
        raw = base64.b64decode(stored[len(SEALED) :])
        try:
            return self._aead.decrypt(raw[:12], raw[12:], _INFO).decode()
        except InvalidTag:
            raise SecretUnavailable("the secret was encrypted with another secret_key") from None
