"""What identifying a caller costs per request, in-process: a warm API key against a warm JWT
access token and a warm introspected (opaque) token.

The proxy benchmark (run.py: gateway+full against gateway+full+jwt) measures the whole
request, where this step is about one percent and the machine's noise is more; this one times
the step alone, many times over, alternating the kinds, so their ratio is the difference a
token makes. Each kind resolves the same credential again and again, as a client sending it on
every request does: what is measured is the cache that makes a repeated credential cheap.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import yaml
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from gateway.api.keys_service import CreateKey
from gateway.config import parse_config
from gateway.control.plane import ControlPlane
from gateway.dataplane.token_callers import TokenCallers
from gateway.keys.keyring import KeyRing
from gateway.keys.scopes import ScopePolicy
from gateway.keys.secrets import KeyFormat
from gateway.store import Org, open_store

ISSUER = "https://auth.bench.invalid"
AUDIENCE = "https://api.bench.invalid"
OPAQUE = "bench-opaque-access-token-0123456789abcdef"


async def introspection_server(org_slug: str) -> tuple[web.AppRunner, str]:
    """An introspection endpoint on 127.0.0.1 that finds OPAQUE active."""

    async def introspect(request: web.Request) -> web.Response:
        form = await request.post()
        active = form.get("token") == OPAQUE
        answer: dict[str, Any] = {"active": active}
        if active:
            answer |= {
                "scope": "read",
                "client_id": "bench-client",
                "sub": "bench-user",
                "org_id": org_slug,
                "exp": int(time.time()) + 3600,
            }
        return web.json_response(answer)

    app = web.Application()
    app.router.add_post("/introspect", introspect)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/introspect"


async def timed(call: Callable[[], Awaitable[object]], count: int) -> float:
    """Microseconds per call."""
    started = time.perf_counter()
    for _ in range(count):
        await call()
    return (time.perf_counter() - started) / count * 1e6


async def measure(rounds: int, count: int) -> dict[str, list[float]]:
    signing = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**RSAAlgorithm.to_jwk(signing.public_key(), as_dict=True), "kid": "k", "alg": "RS256"}
    runner, introspection_url = await introspection_server("bench")
    workdir = tempfile.mkdtemp(prefix="gateway-auth-bench-")
    document = {
        "store": {"backend": "local", "path": f"{workdir}/state.db"},
        "oauth": {
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "jwks": {"keys": [jwk]},
            "algorithms": ["RS256"],
            "introspection": {
                "url": introspection_url,
                "client_id": "gateway",
                "client_secret": "bench-secret",
            },
        },
    }
    config = parse_config(yaml.safe_dump(document).encode(), source="bench", env={}).config
    if config.oauth is None:
        raise SystemExit("bench: the config has no oauth section")
    store = open_store(config.store)
    await store.startup()
    key_format = KeyFormat.from_config(config.keys)
    scopes = ScopePolicy({})
    keyring = KeyRing(store, key_format, scopes, cache_ttl=30.0, last_used_interval=60.0)
    tokens = TokenCallers(config.oauth, keyring, scopes)
    await tokens.startup()
    try:
        org = Org(id="org_bench", slug="bench", name="Bench", plan="default", created_at=0.0)
        await store.create_org(org)
        service = ControlPlane(store, config, key_format).keys_api.service
        _, secret = await service.create("bench", org, CreateKey(name="bench", scopes=["read"]))
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "bench-user",
            "client_id": "bench-client",
            "org_id": "bench",
            "scope": "read",
            "iat": now,
            "exp": now + 3600,
        }
        token = jwt.encode(claims, signing, "RS256", headers={"kid": "k", "typ": "at+jwt"})
        kinds: dict[str, Callable[[], Awaitable[object]]] = {
            "key": lambda: keyring.resolve(secret),
            "jwt": lambda: tokens.resolve(token, "jwt"),
            "introspected": lambda: tokens.resolve(OPAQUE, "introspection"),
        }
        for call in kinds.values():  # warm: every cache holds the credential from here on
            if await call() is None:
                raise SystemExit("bench: a credential did not resolve")
        results: dict[str, list[float]] = {kind: [] for kind in kinds}
        for _ in range(rounds):
            for kind, call in kinds.items():
                results[kind].append(await timed(call, count))
        return results
    finally:
        await tokens.shutdown()
        await keyring.shutdown()
        await store.shutdown()
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternations of the kinds")
    parser.add_argument("--count", type=int, default=50_000, help="calls per kind per round")
    args = parser.parse_args(argv)
    results = asyncio.run(measure(args.rounds, args.count))
    key = statistics.median(results["key"])
    print(
        f"**reproduce:** `.venv/bin/python bench/auth.py --rounds {args.rounds}"
        f" --count {args.count}` (medians of {args.rounds} rounds)\n"
    )
    print("| credential | µs per request (median) | min | max | vs key |")
    print("|---|---:|---:|---:|---:|")
    for kind, values in results.items():
        median = statistics.median(values)
        print(
            f"| {kind} | {median:.2f} | {min(values):.2f} | {max(values):.2f}"
            f" | {median / key:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
