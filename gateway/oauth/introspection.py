"""Opaque access tokens, asked about at the authorization server (RFC 7662) and remembered no
longer than the operator allows."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Callable, Mapping
from functools import partial
from types import MappingProxyType
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import orjson
import structlog

from gateway.breaker import CircuitBreaker
from gateway.oauth.cache import VerifiedTokens
from gateway.oauth.fetch import FetchError, read_capped
from gateway.oauth.tokens import (
    MAX_TOKEN_SIZE,
    Claims,
    InvalidToken,
    number_claim,
    scopes_of,
    string_claim,
)
from gateway.tasks import shared_lookup

log = structlog.get_logger("gateway.oauth")

MAX_ANSWER = 64 * 1024  # an introspection answer is a few hundred bytes
MAX_LOOKUPS = 32  # calls in flight at once, whatever the traffic
OUTAGE_BACKOFF = 1.0  # after a failure, new lookups fail at once for this long
LEEWAY = 30.0  # clock skew allowed on exp and nbf, as for JWTs
# RFC 6750 2.1: what a Bearer token is made of; anything else is refused without a call.
_B64TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")


class IntrospectionUnavailable(Exception):
    """The endpoint could not answer (down, timeout, 5xx, not JSON, refused our credentials):
    the server's fault, never the token's; answered 503."""


def basic_credentials(client_id: str, client_secret: str) -> str:
    """RFC 6749 2.3.1: each part form-urlencoded, then HTTP Basic."""
    pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


class _Refused:
    """A cached "no" (inactive, or not for us): the reason, for logs."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class Introspector:
    """Asks ``url`` whether a token is active, as the client ``client_id``.

    An active answer is kept until the token expires, at most ``cache_ttl``: a token revoked at
    the server is refused within that. A "no" is kept for ``negative_ttl`` (bounded by
    ``cache_ttl``) so one bad token repeated does not reach the server each time; a failure is
    never kept. Lookups of one token share one call; at most MAX_LOOKUPS are in flight, and
    after a failure the endpoint is left alone for a second.
    """

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        client_secret: str,
        cache_ttl: float = 60.0,
        issuer: str | None = None,
        audience: str | tuple[str, ...] | None = None,
        scopes_claim: str | None = None,
        timeout: float = 5.0,
        negative_ttl: float = 5.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.cache_ttl = cache_ttl
        self.negative_ttl = min(negative_ttl, cache_ttl)
        self.issuer = issuer
        self.audiences = (audience,) if isinstance(audience, str) else audience
        self.scopes_claim = scopes_claim
        self.timeout = timeout
        self._authorization = basic_credentials(client_id, client_secret)
        self._clock = clock
        self._cache: VerifiedTokens[Claims | _Refused] = VerifiedTokens(max_entries)
        self._inflight: dict[bytes, asyncio.Task[Claims | _Refused]] = {}
        self._lookups = asyncio.Semaphore(MAX_LOOKUPS)
        self._breaker = CircuitBreaker(OUTAGE_BACKOFF, clock=clock)
        self._session: aiohttp.ClientSession | None = None
        self._last_success: float | None = None
        self._last_error: str | None = None
        self._failing = False
        self.calls = 0
        self.cache_hits = 0

    async def startup(self) -> None:
        """Nothing to fetch ahead: the first token asks."""

    async def shutdown(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def state(self) -> dict[str, object]:
        return {
            "url": self.url,
            "last_success": self._last_success,
            "last_error": self._last_error,
            "failing": self._failing,
        }

    async def introspect(self, token: str, digest: bytes) -> Claims:
        """The active token's claims; InvalidToken, or IntrospectionUnavailable."""
        # SECURITY: bounded before anything is sent; a token is ASCII by construction.
        if len(token) > MAX_TOKEN_SIZE or not _B64TOKEN.fullmatch(token):
            raise InvalidToken("not a bearer token (RFC 6750 b64token) of at most 8 KiB")
        cached = self._cache.get(digest, now=self._clock(), generation=0)
        if cached is None:
            if digest not in self._inflight and not self._breaker.allow():
                raise IntrospectionUnavailable(self._last_error or "backing off")
            task = shared_lookup(self._inflight, digest, partial(self._lookup, token, digest))
            # A caller cancelled (its client gone) cancels its own wait, not the call others share.
            cached = await asyncio.shield(task)
        else:
            self.cache_hits += 1
        if isinstance(cached, _Refused):
            raise InvalidToken(cached.reason)
        return cached

    async def _lookup(self, token: str, digest: bytes) -> Claims | _Refused:
        async with self._lookups:
            # Waited for a slot: the endpoint may have failed meanwhile. Queued lookups do not
            # each wait out a timeout against an endpoint that is down.
            if not self._breaker.allow():
                raise IntrospectionUnavailable(self._last_error or "backing off")
            try:
                answer = await self._ask(token)
            except IntrospectionUnavailable as exc:
                self._breaker.failure()
                self._failing = True
                self._last_error = str(exc)
                log.warning("introspection_failed", url=self.url, error=str(exc))
                raise
        self._breaker.success()
        self._failing = False
        self._last_success = now = self._clock()
        try:
            claims = self._claims(answer, now)
        except InvalidToken as exc:
            refused = _Refused(exc.reason)
            if self.negative_ttl > 0:
                self._cache.put(digest, refused, deadline=now + self.negative_ttl, generation=0)
            return refused
        if self.cache_ttl > 0:
            deadline = min(claims.expires_at, now + self.cache_ttl)
            self._cache.put(digest, claims, deadline=deadline, generation=0)
        return claims

    async def _ask(self, token: str) -> Mapping[str, Any]:
        if self._session is None:
            # trust_env stays off: a proxy in the environment must not see tokens.
            self._session = aiohttp.ClientSession()
        self.calls += 1
        try:
            async with self._session.post(
                self.url,
                data={"token": token, "token_type_hint": "access_token"},
                headers={"Authorization": self._authorization, "Accept": "application/json"},
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as answer:
                if answer.status in (401, 403):
                    raise IntrospectionUnavailable(
                        f"{self.url} refused the gateway's client credentials"
                        f" (HTTP {answer.status})"
                    )
                if answer.status != 200:
                    raise IntrospectionUnavailable(f"{self.url} answered HTTP {answer.status}")
                body = await read_capped(answer, MAX_ANSWER)
        except FetchError as exc:
            raise IntrospectionUnavailable(str(exc)) from None
        except TimeoutError:
            raise IntrospectionUnavailable(
                f"{self.url} did not answer within {self.timeout:g}s"
            ) from None
        except aiohttp.ClientError as exc:
            raise IntrospectionUnavailable(f"{self.url}: {exc.__class__.__name__}") from None
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise IntrospectionUnavailable(f"{self.url} did not answer JSON") from None
        if not isinstance(document, dict):
            raise IntrospectionUnavailable(f"{self.url} did not answer a JSON object")
        return document

    def _claims(self, answer: Mapping[str, Any], now: float) -> Claims:
        if answer.get("active") is not True:
            raise InvalidToken("inactive")
        exp = number_claim(answer, "exp")
        if exp is not None and exp <= now - LEEWAY:
            raise InvalidToken("expired")
        nbf = number_claim(answer, "nbf")
        if nbf is not None and nbf > now + LEEWAY:
            raise InvalidToken("not yet valid")
        issuer = answer.get("iss")
        if self.issuer is not None and issuer is not None and issuer != self.issuer:
            raise InvalidToken("issued by another server")
        aud = answer.get("aud")
        if self.audiences and aud is not None:
            named = [aud] if isinstance(aud, str) else aud
            if not isinstance(named, list) or not any(a in named for a in self.audiences):
                raise InvalidToken("meant for another audience")
        # SECURITY: a refresh token is not an access token (RFC 6749 1.5), even if "active".
        if str(answer.get("token_type", "")).lower() in ("refresh_token", "refresh"):
            raise InvalidToken("a refresh token")
        return Claims(
            subject=string_claim(answer, "sub"),
            client_id=string_claim(answer, "client_id"),
            scopes=scopes_of(answer, self.scopes_claim),
            expires_at=exp if exp is not None else now + self.cache_ttl,
            token_id=string_claim(answer, "jti"),
            raw=MappingProxyType(dict(answer)),
        )
