"""Who an OAuth access token speaks for: the token checked (a JWT by signature, an opaque one by
introspection), its org found in the store, its identity built once and reused until it
expires."""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from gateway.config.oauth import OAuthConfig
from gateway.keys.keyring import Identity, KeyRing, TokenBearer, token_identity
from gateway.keys.scopes import ScopePolicy
from gateway.oauth import (
    Claims,
    IntrospectionUnavailable,
    Introspector,
    InvalidToken,
    JwksCache,
    JwtVerifier,
    KeysUnavailable,
)
from gateway.store import Org

TokenKind = Literal["jwt", "introspection"]
MAX_IDENTITIES = 10_000
MAX_CLAIM = 1024  # longest sub or client_id passed on as a header
# Control characters would inject headers; a lone surrogate is no text to send at all.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
MAX_SCOPES = 256
_SPACE = re.compile(r"[\x00-\x20\x7f\ud800-\udfff]")  # X-Scopes is space-separated


class TokenUnavailable(Exception):
    """The token could not be checked (keys or introspection out of reach): a 503, not a 401."""


@dataclass(frozen=True, slots=True)
class _Built:
    claims: Claims  # the verifier's cached object: the same one while the token is cached
    org_ref: str
    org: Org  # the key ring's cached object: the same one while the org is unchanged
    identity: Identity
    # A JWT's identity is good until its exp (leeway included) under the key set that verified
    # it; an introspected token's is asked about each time (the introspector's cache decides).
    deadline: float
    generation: int


def looks_like_jwt(token: str) -> bool:
    """A JWS in compact form: three base64url parts, the first a JSON object ("eyJ...")."""
    return token.startswith("eyJ") and token.count(".") == 2


class TokenCallers:
    """Resolves access tokens to identities for one config's ``oauth`` section.

    JWT-shaped tokens are verified against the key set when one is configured; any other token
    goes to introspection when that is configured, and is refused otherwise. Raises
    InvalidToken (401) or TokenUnavailable (503); a store outage is the key ring's StoreError.
    """

    def __init__(
        self,
        config: OAuthConfig,
        keyring: KeyRing,
        scopes: ScopePolicy,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keyring = keyring
        self.scopes = scopes
        self.org_claim = config.org_claim
        self.leeway = config.leeway
        self._clock = clock
        self.jwks: JwksCache | None = None
        self.verifier: JwtVerifier | None = None
        if config.verifies_jwts:
            self.jwks = JwksCache(
                jwks=config.jwks,
                url=config.jwks_url,
                discovery_url=config.discovery_url,
                issuer=config.issuer,
                refresh=config.jwks_refresh,
                clock=clock,
            )
            self.verifier = JwtVerifier(
                self.jwks,
                issuer=config.issuer or "",
                audience=config.audience,
                algorithms=config.algorithms,
                leeway=config.leeway,
                scopes_claim=config.scopes_claim,
                clock=clock,
            )
        self.introspector: Introspector | None = None
        if config.introspection is not None:
            introspection = config.introspection
            self.introspector = Introspector(
                introspection.url,
                client_id=introspection.client_id,
                client_secret=introspection.client_secret,
                cache_ttl=introspection.cache_ttl,
                issuer=config.issuer,
                audience=config.audiences,
                scopes_claim=config.scopes_claim,
                timeout=introspection.timeout,
                clock=clock,
            )
        self._built: OrderedDict[bytes, _Built] = OrderedDict()
        self._users = 0  # snapshots that took it (startup) and have not let go (shutdown)

    async def startup(self) -> None:
        """Taken by each snapshot that uses it: a reload that keeps the oauth section hands the
        same checks, keys and caches to the next snapshot (through a key-server outage, the
        keys fetched before it too). Started by the first, stopped by the last to let go."""
        self._users += 1
        if self._users > 1:
            return
        if self.jwks is not None:
            await self.jwks.startup()
        if self.introspector is not None:
            await self.introspector.startup()

    async def shutdown(self) -> None:
        self._users -= 1
        if self._users > 0:
            return
        if self.jwks is not None:
            await self.jwks.shutdown()
        if self.introspector is not None:
            await self.introspector.shutdown()

    def state(self) -> dict[str, object]:
        """For readiness: whether keys and introspection are in reach, and why not."""
        state: dict[str, object] = {}
        if self.jwks is not None:
            jwks = self.jwks.state()
            # Cached keys keep serving through an outage: ok means fresh, not merely usable.
            state["jwks"] = {**jwks, "ok": not jwks["failing"] and bool(jwks["keys"])}
        if self.introspector is not None:
            introspection = self.introspector.state()
            state["introspection"] = {**introspection, "ok": not introspection["failing"]}
        return state

    def kind_of(self, token: str) -> TokenKind | None:
        """How this token would be checked, or None when nothing configured can check it."""
        if self.verifier is not None and looks_like_jwt(token):
            return "jwt"
        if self.introspector is not None:
            return "introspection"
        return None

    async def resolve(self, token: str, kind: TokenKind) -> Identity:
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        built = self._built.get(digest)
        jwks = self.jwks
        # The hot path, a dict lookup and three comparisons: a JWT seen before, its key set and
        # its org unchanged. Anything else takes the whole way below.
        if built is not None and jwks is not None and kind == "jwt":
            jwks.poll()  # cached tokens alone must still keep the key set fresh
            now = self._clock()
            if (
                now < built.deadline
                and built.generation == jwks.generation
                and self.keyring.org_is_fresh(built.org_ref, built.org, now)
            ):
                return built.identity
        generation = jwks.generation if jwks is not None else 0
        try:
            if kind == "jwt" and self.verifier is not None:
                claims = await self.verifier.verify(token, digest)
            elif self.introspector is not None:
                claims = await self.introspector.introspect(token, digest)
            else:
                raise InvalidToken("no way to check this kind of token")
        except (KeysUnavailable, IntrospectionUnavailable) as exc:
            raise TokenUnavailable(str(exc)) from None
        ref, org = await self._org(claims)
        if built is not None and built.claims is claims and built.org is org:
            return built.identity
        for name, value in (("sub", claims.subject), ("client_id", claims.client_id)):
            # SECURITY: these go to the backend as header values: never a control character
            # (a CR or LF would inject headers), never unbounded.
            if value is not None and (len(value) > MAX_CLAIM or _CONTROL.search(value)):
                raise InvalidToken(f"{name} is not a printable string of at most {MAX_CLAIM}")
        if len(claims.scopes) > MAX_SCOPES or any(not s or _SPACE.search(s) for s in claims.scopes):
            raise InvalidToken(f"scopes: more than {MAX_SCOPES}, or one empty or with a space")
        bearer = TokenBearer(
            kind, claims.subject, claims.client_id, claims.scopes, claims.expires_at
        )
        identity = token_identity(bearer, org, self.scopes.expand(claims.scopes))
        deadline = claims.expires_at + self.leeway if kind == "jwt" else 0.0
        self._built[digest] = _Built(claims, ref, org, identity, deadline, generation)
        self._built.move_to_end(digest)
        if len(self._built) > MAX_IDENTITIES:
            self._built.popitem(last=False)
        return identity

    async def _org(self, claims: Claims) -> tuple[str, Org]:
        ref = claims.raw.get(self.org_claim)
        if not isinstance(ref, str) or not ref:
            raise InvalidToken(f"no {self.org_claim} claim naming an org")
        org = await self.keyring.org(ref)
        if org is None:
            raise InvalidToken(f"{self.org_claim} names no org here")
        return ref, org
