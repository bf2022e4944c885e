"""The admin tokens in force, by name: which holder, if any, a presented token belongs to."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class AdminTokens:
    """Named tokens (``admin`` for admin.token); ``resolve`` finds a token's name.

    SECURITY: tokens are kept and compared as SHA-256 digests, every one of them on every
    call, so neither the time taken nor an early exit tells how close a guess came, nor which
    token it nearly matched.
    """

    __slots__ = ("_named",)

    def __init__(self, named: Iterable[tuple[str, str]]) -> None:
        self._named = tuple((name, _digest(token)) for name, token in named)
        if not self._named:
            raise ValueError("at least one admin token is needed")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._named)

    def resolve(self, presented: str | None) -> str | None:
        """The name of the token presented, or None when it is none of ours."""
        if not presented:
            return None
        digest = _digest(presented)
        found: str | None = None
        for name, expected in self._named:
            if hmac.compare_digest(digest, expected) and found is None:
                found = name
        return found
