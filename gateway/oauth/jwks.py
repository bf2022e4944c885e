"""The signing keys of a trusted authorization server, cached and refreshed without a storm."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import structlog
from jwt import PyJWK
from jwt.exceptions import InvalidKeyError, PyJWKError
from yarl import URL

from gateway.oauth.fetch import MAX_BYTES, FetchError, fetch_json
from gateway.tasks import cancel_and_wait

log = structlog.get_logger("gateway.oauth")

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A verification key, and the one algorithm its JWK pins it to (None: not pinned)."""

    kid: str | None
    alg: str | None
    key: Any  # what PyJWT verifies with: a cryptography public key, or bytes for an HMAC


KeysByKid = dict[str | None, tuple[SigningKey, ...]]


class KeysUnavailable(Exception):
    """No key for a token because the key source is failing: the server's fault, not the token's
    (answered 503, never 401)."""


def parse_jwks(document: Any) -> tuple[KeysByKid, frozenset[bytes], int]:
    """The usable signing keys of a JWK Set by ``kid``, a fingerprint of them, and how many of
    the set's keys were left out (encryption keys, private keys, unknown types)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('not a JWK Set (a JSON object with a "keys" list)')
    keys: dict[str | None, list[SigningKey]] = {}
    fingerprint: set[bytes] = set()
    skipped = 0
    for data in document["keys"]:
        key = _signing_key(data)
        if key is None:
            skipped += 1
            continue
        keys.setdefault(data.get("kid"), []).append(key)
        fingerprint.add(orjson.dumps(data, option=orjson.OPT_SORT_KEYS))
    if not fingerprint:
        raise ValueError(f"the JWK Set has no usable signing key ({skipped} left out)")
    return {kid: tuple(found) for kid, found in keys.items()}, frozenset(fingerprint), skipped


def _signing_key(data: Any) -> SigningKey | None:
    if not isinstance(data, dict) or not isinstance(data.get("kid", ""), str):
        return None
    if data.get("use", "sig") != "sig":
        return None  # an encryption key shares the set but must never verify a signature
    ops = data.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    if data.get("kty") != "oct" and "d" in data:
        return None  # a published private key is a mistake at the server; do not take part in it
    alg = data.get("alg")
    if alg is not None and not isinstance(alg, str):
        return None
    try:
        return SigningKey(data.get("kid"), alg, PyJWK(data).key)
    except (InvalidKeyError, PyJWKError, TypeError, ValueError):
        return None  # a key type or curve this gateway does not verify


class JwksCache:
    """Keys from an inline JWK Set, a JWKS URL, or the ``jwks_uri`` of an OIDC discovery document.

    A remote set is refreshed every ``refresh`` seconds, lazily: the request that finds it due
    starts one fetch in the background and is served from the cached keys. A ``kid`` not in the
    set refetches at once, but at most once per ``unknown_kid_interval`` however many requests
    ask (they all await the one fetch in flight), so random kids cannot flood the server. A
    failed fetch keeps the cached keys serving and is retried after ``unknown_kid_interval``;
    ``state()`` tells readiness about it. ``generation`` changes whenever the keys do.
    """

    def __init__(
        self,
        *,
        jwks: Mapping[str, Any] | None = None,
        url: str | None = None,
        discovery_url: str | None = None,
        issuer: str | None = None,
        refresh: float = 300.0,
        unknown_kid_interval: float = 10.0,
        timeout: float = 5.0,
        max_bytes: int = MAX_BYTES,
        clock: Clock = time.time,
    ) -> None:
        if sum(source is not None for source in (jwks, url, discovery_url)) != 1:
            raise ValueError("give exactly one of jwks, url, discovery_url")
        for remote in (url, discovery_url):
            if remote is not None and URL(remote).scheme not in ("http", "https"):
                raise ValueError(f"{remote}: must be an http(s) URL")
        self.source = url or discovery_url or "inline"
        self.refresh_interval = refresh
        self.unknown_kid_interval = unknown_kid_interval
        self._discovery_url = discovery_url
        self._issuer = issuer  # what a discovery document must name as its issuer
        self._jwks_uri = url
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._clock = clock
        self._keys: KeysByKid = {}
        self._fingerprint: frozenset[bytes] = frozenset()
        self.generation = 0
        self._session: aiohttp.ClientSession | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._last_attempt: float | None = None
        self._last_success: float | None = None
        self._last_error: str | None = None
        self._failing = False
        self._remote = jwks is None
        if jwks is not None:
            self._install(jwks)

    async def startup(self) -> None:
        """Load a remote set once; a failure is recorded (state()), not raised."""
        if self._remote:
            await self.refresh()

    async def shutdown(self) -> None:
        await cancel_and_wait(self._inflight)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def refresh(self) -> None:
        """Fetch the set now, or join the fetch already in flight."""
        if self._remote:
            await asyncio.shield(self._inflight or self._start_fetch())

    def poll(self) -> None:
        """Start a background fetch if the set is due for one (cheap: call it per request)."""
        if not self._remote or self._inflight is not None:
            return
        now = self._clock()
        last = self._last_attempt
        if (
            last is None
            or now - last >= self.refresh_interval
            or (self._failing and now - last >= self.unknown_kid_interval)
        ):
            self._start_fetch()

    async def get_keys(self, kid: str | None) -> tuple[SigningKey, ...]:
        """The keys a token with this ``kid`` (None: the token names none) may be signed with."""
        self.poll()
        found = self._lookup(kid)
        if found or not self._remote:
            return found
        if self._inflight is not None:
            await asyncio.shield(self._inflight)
        elif self._last_attempt is None or (
            self._clock() - self._last_attempt >= self.unknown_kid_interval
        ):
            await asyncio.shield(self._start_fetch())
        found = self._lookup(kid)
        if not found and self._failing:
            raise KeysUnavailable(self._last_error)
        return found

    def state(self) -> dict[str, object]:
        """For readiness and logs: is the set fresh, and why not."""
        return {
            "source": self.source,
            "keys": sum(len(keys) for keys in self._keys.values()),
            "last_success": self._last_success,
            "last_error": self._last_error,
            "failing": self._failing,
        }

    def _lookup(self, kid: str | None) -> tuple[SigningKey, ...]:
        if kid is not None:
            return self._keys.get(kid, ())
        # A token without a kid: the keys published without one, or else the set's only key.
        if None in self._keys:
            return self._keys[None]
        only = [key for keys in self._keys.values() for key in keys]
        return tuple(only) if len(only) == 1 else ()

    def _install(self, document: Any) -> int:
        keys, fingerprint, skipped = parse_jwks(document)
        if fingerprint != self._fingerprint:
            self.generation += 1
        self._keys, self._fingerprint = keys, fingerprint
        return skipped

    def _start_fetch(self) -> asyncio.Task[None]:
        self._last_attempt = self._clock()
        task = asyncio.create_task(self._fetch(), name="oauth-jwks-fetch")
        self._inflight = task

        def done(_: asyncio.Task[None]) -> None:
            if self._inflight is task:
                self._inflight = None

        task.add_done_callback(done)
        return task

    async def _fetch(self) -> None:
        if self._session is None:
            # trust_env stays off: a proxy in the environment must not sit between us and keys.
            self._session = aiohttp.ClientSession()
        try:
            jwks_uri = self._jwks_uri
            if jwks_uri is None and self._discovery_url is not None:
                # Discovered once: the document names where the keys live, which rarely moves.
                jwks_uri = self._jwks_uri = await self._discover(self._session, self._discovery_url)
            if jwks_uri is None:
                return  # an inline set is never fetched
            document = await fetch_json(
                self._session, jwks_uri, time_limit=self._timeout, max_bytes=self._max_bytes
            )
            skipped = self._install(document)
        except (FetchError, ValueError) as exc:
            self._failing = True
            self._last_error = str(exc)
            log.warning("jwks_fetch_failed", source=self.source, error=str(exc))
            return
        self._failing = False
        self._last_success = self._clock()
        log.info("jwks_fetched", source=self.source, keys=self.state()["keys"], skipped=skipped)

    async def _discover(self, session: aiohttp.ClientSession, url: str) -> str:
        document = await fetch_json(
            session, url, time_limit=self._timeout, max_bytes=self._max_bytes
        )
        if not isinstance(document, dict) or not isinstance(document.get("jwks_uri"), str):
            raise ValueError(f"{url}: no jwks_uri in the discovery document")
        # SECURITY: RFC 8414 3.3: a document naming another issuer is not this server's.
        if self._issuer is not None and document.get("issuer") != self._issuer:
            raise ValueError(f"{url}: names issuer {document.get('issuer')!r}")
        jwks_uri = URL(url).join(URL(document["jwks_uri"]))
        # SECURITY: keys found over https must be fetched over https too.
        if jwks_uri.scheme != URL(url).scheme:
            raise ValueError(f"{url}: jwks_uri {jwks_uri} changes the scheme")
        return str(jwks_uri)
