"""API key secrets: ``<prefix>_<live|test>_<random><checksum>``, checked offline, kept as hashes."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from gateway.config import KeysConfig

Environment = Literal["live", "test"]
ENVIRONMENTS: tuple[Environment, ...] = ("live", "test")

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
CHECKSUM_LENGTH = 6  # 62**6 > 2**32: every CRC32 value fits


def base62(value: int, width: int) -> str:
    digits = []
    while value:
        value, rest = divmod(value, 62)
        digits.append(ALPHABET[rest])
    return "".join(reversed(digits)).rjust(width, "0")


def checksum(body: str) -> str:
    """The 6-character base62 CRC32 that ends a key; lets typos and garbage be refused offline."""
    return base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


@dataclass(frozen=True, slots=True)
class ParsedKey:
    environment: Environment
    display_prefix: str  # what may be shown: prefix, environment and the first 4 random characters
    last4: str


class KeyFormat:
    """Makes, parses and hashes key secrets for one ``keys`` config.

    ``environment_in_key: false`` gives keys like ``fw_<random><checksum>`` (the environment is
    then only an attribute of the key, ``live`` unless set otherwise).
    """

    def __init__(
        self,
        prefix: str,
        *,
        environment_in_key: bool = True,
        random_length: int = 32,
        pepper: str | None = None,
    ) -> None:
        self.prefix = prefix
        self.environment_in_key = environment_in_key
        self.random_length = random_length
        self._pepper = pepper.encode() if pepper else None
        env = r"(live|test)_" if environment_in_key else r"()"
        # What every key of ours starts with, typo or not: such a secret is never taken for
        # anything else (an OAuth token), so never sent anywhere else.
        self._heads = (
            (f"{prefix}_live_", f"{prefix}_test_") if environment_in_key else (f"{prefix}_",)
        )
        self._shape = re.compile(
            rf"{re.escape(prefix)}_{env}"
            rf"([0-9A-Za-z]{{{random_length}}})([0-9A-Za-z]{{{CHECKSUM_LENGTH}}})\Z"
        )

    @classmethod
    def from_config(cls, config: KeysConfig) -> KeyFormat:
        return cls(
            config.prefix, environment_in_key=config.environment_in_key, pepper=config.pepper
        )

    def generate(self, environment: Environment = "live") -> str:
        random = "".join(secrets.choice(ALPHABET) for _ in range(self.random_length))
        body = (
            f"{self.prefix}_{environment}_{random}"
            if self.environment_in_key
            else f"{self.prefix}_{random}"
        )
        return body + checksum(body)

    def looks_like_key(self, secret: str) -> bool:
        """Whether the secret starts as our keys do (its checksum may still be wrong)."""
        return secret.startswith(self._heads)

    def parse(self, secret: str) -> ParsedKey | None:
        """The key's parts if it has our shape and a valid checksum, else None (no store lookup)."""
        m = self._shape.match(secret)
        if m is None:
            return None
        body = secret[:-CHECKSUM_LENGTH]
        if not hmac.compare_digest(checksum(body), m.group(3)):
            return None
        environment: Environment = "test" if m.group(1) == "test" else "live"
        head = f"{self.prefix}_{m.group(1)}_" if m.group(1) else f"{self.prefix}_"
        return ParsedKey(environment, head + m.group(2)[:4], secret[-4:])

    def hash(self, secret: str) -> str:
        """What is stored and looked up: SHA-256, or HMAC-SHA256 under the configured pepper.

        SECURITY: the secret itself is never stored; with a pepper, a stolen store cannot even be
        used to test guesses offline.
        """
        data = secret.encode("ascii")
        if self._pepper is not None:
            return hmac.new(self._pepper, data, hashlib.sha256).hexdigest()
        return hashlib.sha256(data).hexdigest()
