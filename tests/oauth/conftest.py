"""A test authorization server on 127.0.0.1 (JWKS, discovery) and tokens minted with PyJWT."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.oauth import Introspector, JwksCache, JwtVerifier
from tests.conftest import FakeClock, RunningGateway, Upstream, UpstreamFactory, make_config
from tests.oauth.introspection_endpoint import (
    CLIENT_ID,
    SECRET,
    Introspection,
    start_introspection,
)

ISSUER = "https://auth.example.test"
AUDIENCE = "https://api.example.test"
START = 1_700_000_000.0


@dataclass
class Signer:
    """A private key of the authorization server and the public JWK it publishes."""

    kid: str | None
    alg: str
    private: Any
    jwk: dict[str, Any]


def _signer(kid: str | None, alg: str, private: Any, to_jwk: Any) -> Signer:
    public = to_jwk(private.public_key(), as_dict=True)
    public.update({"use": "sig", "alg": alg})
    if kid is not None:
        public["kid"] = kid
    return Signer(kid, alg, private, public)


def rsa_signer(kid: str | None = "rsa-1", alg: str = "RS256") -> Signer:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _signer(kid, alg, private, RSAAlgorithm.to_jwk)


def ec_signer(kid: str | None = "ec-1") -> Signer:
    return _signer(kid, "ES256", ec.generate_private_key(ec.SECP256R1()), ECAlgorithm.to_jwk)


def ed_signer(kid: str | None = "ed-1") -> Signer:
    return _signer(kid, "EdDSA", ed25519.Ed25519PrivateKey.generate(), OKPAlgorithm.to_jwk)


@pytest.fixture(scope="session")
def rsa_key() -> Signer:
    return rsa_signer()


@pytest.fixture(scope="session")
def ec_key() -> Signer:
    return ec_signer()


@pytest.fixture(scope="session")
def ed_key() -> Signer:
    return ed_signer()


def mint(
    signer: Signer,
    *,
    now: float = START,
    alg: str | None = None,
    headers: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    **claims: Any,
) -> str:
    """An access token as an RFC 9068 server issues it; claims and headers overridable."""
    payload: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "client_id": "app-1",
        "scope": "orders:read orders:write",
        "iat": int(now),
        "exp": int(now) + 3600,
        "jti": uuid.uuid4().hex,
    }
    payload.update(claims)
    for name in drop:
        payload.pop(name)
    header: dict[str, Any] = {"typ": "at+jwt"}
    if signer.kid is not None:
        header["kid"] = signer.kid
    header.update(headers or {})
    # None drops a header; PyJWT adds "typ": "JWT" unless typ is given as None.
    header = {k: v for k, v in header.items() if v is not None or k == "typ"}
    return jwt.encode(payload, signer.private, algorithm=alg or signer.alg, headers=header)


@dataclass
class AuthServer:
    """Serves /jwks (what ``keys`` holds), a discovery document, and misbehaving variants."""

    url: str = ""
    keys: list[dict[str, Any]] = field(default_factory=list)
    down: bool = False  # /jwks answers 503
    gate: asyncio.Event | None = None  # when set, /jwks answers only once the event is set
    paths: list[str] = field(default_factory=list)

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/jwks"

    @property
    def discovery_url(self) -> str:
        return f"{self.url}/.well-known/openid-configuration"

    def fetches(self) -> int:
        """How many times the key set was asked for."""
        return self.paths.count("/jwks")

    def publish(self, *signers: Signer) -> None:
        self.keys = [signer.jwk for signer in signers]

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.paths.append(request.path)
        port = request.url.port
        match request.path:
            case "/jwks":
                if self.gate is not None:
                    await self.gate.wait()
                if self.down:
                    return web.Response(status=503)
                return web.json_response({"keys": self.keys})
            case "/.well-known/openid-configuration":
                return web.json_response({"issuer": ISSUER, "jwks_uri": "/jwks"})
            case "/other-issuer":
                return web.json_response({"issuer": "https://evil.test", "jwks_uri": "/jwks"})
            case "/redirect":
                raise web.HTTPFound("/jwks")
            case "/redirect-https":
                raise web.HTTPFound(f"https://127.0.0.1:{port}/jwks")
            case "/big":
                return web.json_response({"keys": self.keys, "pad": "x" * (2 << 20)})
            case "/big-chunked":
                answer = web.StreamResponse()
                answer.enable_chunked_encoding()
                await answer.prepare(request)
                for _ in range(40):
                    await answer.write(b" " * 65536)
                return answer
            case "/not-json":
                return web.Response(text="<html>login</html>")
        return web.Response(status=404)


@pytest.fixture
async def auth_server(upstream_factory: UpstreamFactory, rsa_key: Signer) -> AuthServer:
    server = AuthServer()
    server.publish(rsa_key)
    upstream = await upstream_factory(server.handle, record=False)
    server.url = upstream.url
    return server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


CacheFactory = Callable[..., JwksCache]


@pytest.fixture
async def make_cache(clock: FakeClock) -> AsyncIterator[CacheFactory]:
    """Key caches on the test's clock, shut down (their sessions closed) at teardown."""
    made: list[JwksCache] = []

    def make(**options: Any) -> JwksCache:
        cache = JwksCache(clock=clock, **options)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        await cache.shutdown()


@pytest.fixture
async def jwks(make_cache: CacheFactory, auth_server: AuthServer) -> JwksCache:
    cache = make_cache(url=auth_server.jwks_url)
    await cache.startup()
    return cache


@pytest.fixture
def verifier(jwks: JwksCache, clock: FakeClock) -> JwtVerifier:
    return JwtVerifier(
        jwks,
        issuer=ISSUER,
        audience=AUDIENCE,
        algorithms=["RS256", "ES256", "EdDSA"],
        clock=clock,
    )


# ---------------------------------------------------------------------------------------------
# Gateways that take these tokens, end to end (test_gateway_*.py).


@dataclass
class Tokens:
    """Mints access tokens for one org on a gateway's clock: ``tokens(scope="a b")``, or with
    another signer ``tokens(signer=other)``; mint's own options (headers, drop) pass through."""

    signer: Signer
    clock: FakeClock
    org: str = "acme"

    def __call__(self, signer: Signer | None = None, **claims: Any) -> str:
        claims.setdefault("org_id", self.org)
        return mint(signer or self.signer, now=self.clock.now, **claims)


@pytest.fixture
def gateway_clock() -> FakeClock:
    """The gateway's clock: today's time (what the store expires stays real), moved by hand."""
    return FakeClock()


@pytest.fixture
def tokens(rsa_key: Signer, gateway_clock: FakeClock) -> Tokens:
    return Tokens(rsa_key, gateway_clock)


def oauth_section(server: AuthServer, **extra: Any) -> dict[str, Any]:
    """The gateway's oauth section trusting ``server``."""
    return {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "jwks_url": server.jwks_url,
        "algorithms": ["RS256"],
        "jwks_refresh": "5m",
        **extra,
    }


# Routes of an API that takes both: apps with tokens, servers with keys.
JWT_ROUTES: list[dict[str, Any]] = [
    {"path": "/v1/orders", "upstream": "app", "auth": ["key", "oauth"], "scopes": ["orders:read"]},
    {
        "path": "/v1/reports",
        "upstream": "app",
        "auth": ["key", "oauth"],
        "scopes": ["reports:read"],
    },
    {"path": "/v1/apps", "upstream": "app", "auth": "oauth"},
    {"path": "/v1/servers", "upstream": "app", "auth": "key"},
    {
        "path": "/v1/invoices",
        "upstream": "app",
        "auth": ["key", "oauth"],
        "idempotency": "optional",
    },
    {"path": "/public", "upstream": "app"},
]


def jwt_config(upstream: Upstream, auth_server: AuthServer, **extra: Any) -> dict[str, Any]:
    """A gateway taking keys and ``auth_server``'s tokens on JWT_ROUTES (or ``routes``)."""
    return make_config(
        {"app": {"targets": [upstream.url]}},
        extra.pop("routes", JWT_ROUTES),
        **{
            "oauth": oauth_section(auth_server),
            "plans": {"free": {}},
            "scopes": {"implies": {"orders:admin": ["orders:read", "reports:read"]}},
            **extra,
        },
    )


@dataclass
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: Any  # the JSON, or the bytes of anything else


async def send(
    gw: RunningGateway,
    path: str,
    credential: str | None = None,
    *,
    method: str = "GET",
    headers: Iterable[tuple[str, str]] = (),
    json: Any = None,
) -> Answer:
    """One request with ``credential`` as its Bearer token; ``headers`` may repeat a name."""
    sent = CIMultiDict(headers)
    if credential is not None:
        sent["Authorization"] = f"Bearer {credential}"
    async with gw.session.request(method, f"{gw.url}{path}", headers=sent, json=json) as r:
        body = await r.json() if r.content_type == "application/json" else await r.read()
        return Answer(r.status, r.headers, body)


@pytest.fixture
async def introspection(upstream_factory: UpstreamFactory) -> Introspection:
    """A test authorization server's introspection endpoint."""
    return await start_introspection(upstream_factory)


IntrospectorFactory = Callable[..., Introspector]


@pytest.fixture
async def make_introspector(
    introspection: Introspection, clock: FakeClock
) -> AsyncIterator[IntrospectorFactory]:
    """Introspectors of ``introspection`` (or of ``url``) on the test's clock, with the
    endpoint's credentials; shut down (their sessions closed) at teardown."""
    made: list[Introspector] = []

    def build(url: str | None = None, **options: Any) -> Introspector:
        settings: dict[str, Any] = {
            "client_id": CLIENT_ID,
            "client_secret": SECRET,
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "timeout": 0.5,
            "clock": clock,
            **options,
        }
        introspector = Introspector(url or introspection.url, **settings)
        made.append(introspector)
        return introspector

    yield build
    for introspector in made:
        await introspector.shutdown()
