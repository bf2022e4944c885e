"""Benchmark the gateway against direct, a bare aiohttp proxy and nginx on one fast upstream.

python-floor is the ceiling of any Python proxy on asyncio: raw Protocols and llhttp, no
feature at all (bench/floor_proxy.py); its CPU per request is the part of the gateway's that
no Python code can remove. The gateway also runs with API keys (gateway+auth) and with rate
limits that never refuse, on the local store (gateway+limits) and on a Redis the harness
starts (gateway+limits+redis), and with the full pipeline (gateway+full: a key with the
route's scope, a Redis rate limit, identity headers, the access log), the same on a Redis
Cluster (gateway+full+cluster), and the same with an OAuth access token instead of the key
(gateway+full+jwt: the route takes `auth: [key, oauth]`, the load carries an RS256 JWT signed by
a key the harness makes per run and gives the gateway inline). Every contender is measured at
each connection count in turn (50 and 256 by default: one table each), and issue 13's targets
are judged under each table from that table's figures.
"""

# Over 400 lines: one script on purpose, so every contender's set-up sits beside the others and a
# reader compares them side by side; shared pieces (processes, nginx, Redis, load generator,
# upstream, targets) are modules beside it.

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

# Run as a script (`python bench/run.py`), so bench/ is on sys.path and its siblings import.
from harness import (
    BENCH,
    BENCH_PATH,
    LOAD_GRACE,
    BenchError,
    Child,
    Processes,
    _get,
    _pick,
    _slug,
    cpu_seconds,
    ensure_open_files,
    free_port,
    markdown_table,
    nginx_version,
    nproc,
    probe,
    proxy_server,
    reproduce,
    run_report,
    start_nginx,
    start_redis,
    start_redis_cluster,
    upstream_server,
    wait_for_port,
    wait_until_closed,
)
from targets import Verdict, ratio_target, render_verdicts

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

CONTENDERS = (
    "direct",
    "aiohttp-bare",
    "python-floor",
    "gateway",
    "gateway+log",
    "gateway+auth",
    "gateway+limits",
    "gateway+limits+redis",
    "gateway+full",
    "gateway+full+jwt",
    "gateway+full+cluster",
    "nginx-proxy",
)
# Issue 13's targets, each against aiohttp-bare in the same run; judged at every connection count.
FULL_RPS_FACTOR = 1.5  # gateway+full's requests/s at least this times aiohttp-bare's
FULL_P99_FACTOR = 1.0  # and its p99 at most this times aiohttp-bare's
PLAIN_RPS_FACTOR = 2.5  # gateway (auth: none) at least this times aiohttp-bare's requests/s
# wrk prints latencies with these units; the table is in milliseconds.
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_WRK_LATENCY = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_WRK_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_WRK_NON_2XX = re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)", re.MULTILINE)
_WRK_SOCKET = re.compile(
    r"^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.MULTILINE
)
_WRK_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.MULTILINE)


@dataclass(frozen=True)
class Measurement:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int = 0
    # connect/read/write/timeout, as wrk reports them; the Python generator has one bucket.
    socket_errors: dict[str, int] = field(default_factory=dict)
    # The contender's own CPU time (user + system) per request answered, in microseconds:
    # what each request costs the proxy, whatever else the shared machine was doing.
    cpu_us: float | None = None

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values())


@dataclass(frozen=True)
class Row:
    name: str
    result: Measurement
    notes: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# Contenders.


def start_upstream(procs: Processes, kind: str) -> tuple[int, Child]:
    port = free_port()
    if kind == "nginx":
        return port, start_nginx(procs, "upstream", port, upstream_server(port))
    argv = [sys.executable, str(BENCH / "upstream.py"), "--port", str(port)]
    child = procs.start("upstream", argv)
    wait_for_port(child, port)
    return port, child


@dataclass(frozen=True)
class GatewayVariant:
    """What a gateway contender turns on beyond the plain proxy path."""

    access_log: bool = False
    auth: bool = False  # the route takes `auth: key`; load carries a key made at start-up
    limits: bool = False  # the key's plan has a rate limit too high to ever refuse
    redis: bool = False  # the store is a Redis the harness starts, not SQLite
    cluster: bool = False  # that Redis is a 3-master Redis Cluster
    # The route requires a scope the bench key has; a second key, without it, must get 403.
    scope: bool = False
    # The route takes `auth: [key, oauth]` and the load carries a JWT instead of the key.
    jwt: bool = False


GATEWAYS = {
    "gateway": GatewayVariant(),
    "gateway+log": GatewayVariant(access_log=True),
    "gateway+auth": GatewayVariant(auth=True),
    "gateway+limits": GatewayVariant(auth=True, limits=True),
    "gateway+limits+redis": GatewayVariant(auth=True, limits=True, redis=True),
    # Issue 13's full pipeline. Request ids and metrics are always on; identity headers come
    # with auth: every gateway contender pays for those.
    "gateway+full": GatewayVariant(access_log=True, auth=True, limits=True, redis=True, scope=True),
    # The same on a Redis Cluster (issue 14): its ratio to gateway+full is the cluster's cost.
    "gateway+full+cluster": GatewayVariant(
        access_log=True, auth=True, limits=True, redis=True, scope=True, cluster=True
    ),
    # The same with an OAuth access token (a JWT) where the key was: its ratio to gateway+full
    # is what a token costs beside a key (the issue: no more).
    "gateway+full+jwt": GatewayVariant(
        access_log=True, auth=True, limits=True, redis=True, scope=True, jwt=True
    ),
}
BENCH_PLAN = "bench"
BENCH_ORG = "bench"
BENCH_SCOPE = "bench:read"
# A sustained rate no run comes near: every request is counted, none is refused.
NEVER_REFUSE = {"requests": 1_000_000_000, "per": "1m"}
# The authorization server the JWT contender's tokens come from: names only, nothing is fetched.
BENCH_ISSUER = "https://auth.bench.invalid"
BENCH_AUDIENCE = "https://api.bench.invalid"
BENCH_KID = "bench"


def unsupported(variant: GatewayVariant) -> str | None:
    """Why the checked-out gateway cannot run this variant, or None when it can."""
    from gateway.config import AdminConfig, GatewayConfig, PlanConfig, RouteConfig, StoreConfig

    if variant.auth and "token" not in AdminConfig.model_fields:
        return "this gateway has no admin token setting"
    if variant.auth and "auth" not in RouteConfig.model_fields:
        return "this gateway has no API keys"
    if variant.limits and "rate_limit" not in PlanConfig.model_fields:
        return "this gateway has no rate limits"
    if variant.scope and "scopes" not in RouteConfig.model_fields:
        return "this gateway has no scopes"
    if variant.redis and not shutil.which("redis-server"):
        return "redis-server not installed"
    if variant.cluster and "cluster" not in StoreConfig.model_fields:
        return "this gateway has no Redis Cluster store"
    if variant.cluster and not shutil.which("redis-cli"):
        return "redis-cli not installed"
    if variant.jwt and "oauth" not in GatewayConfig.model_fields:
        return "this gateway has no OAuth access tokens"
    return None


class TokenIssuer:
    """Stands in for the authorization server: an RSA key made for this run, whose public half
    the gateway is given inline (no network), and the RS256 access tokens it signs. Another
    issuer's tokens carry the same kid and iss but fail the signature check."""

    def __init__(self) -> None:
        # Imported here: a gateway from before OAuth may not have them installed.
        from cryptography.hazmat.primitives.asymmetric import rsa
        from jwt.algorithms import RSAAlgorithm

        self._key: RSAPrivateKey = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        self.public_jwk: dict[str, object] = {**public, "kid": BENCH_KID, "alg": "RS256"}

    def token(self, scope: str | None = BENCH_SCOPE) -> str:
        """An access token (RFC 9068) for the bench org, valid for a day; without a scope claim
        when scope is None."""
        import jwt

        now = int(time.time())
        claims: dict[str, object] = {
            "iss": BENCH_ISSUER,
            "aud": BENCH_AUDIENCE,
            "sub": "bench-user",
            "client_id": "bench-client",
            # Tokens name their org by id or slug: the slug is known before the org is made.
            "org_id": BENCH_ORG,
            "iat": now,
            "exp": now + 86_400,
        }
        if scope is not None:
            claims["scope"] = scope
        return jwt.encode(
            claims, self._key, algorithm="RS256", headers={"typ": "at+jwt", "kid": BENCH_KID}
        )


@dataclass(frozen=True)
class GatewaySetup:
    """Where and how the gateway under test listens, beyond its data port."""

    admin_port: int
    admin_token: str | None = None  # set when the harness must call the admin API
    redis_urls: Sequence[str] = ()  # the Redis, or the cluster's nodes
    jwk: Mapping[str, object] | None = None  # the token issuer's public key, for `oauth:`


def gateway_config(
    workdir: Path,
    name: str,
    port: int,
    upstream_port: int,
    variant: GatewayVariant,
    setup: GatewaySetup,
) -> Path:
    # Settings that only some versions of the config have are set when the model knows them,
    # so the harness measures whichever gateway is checked out.
    from gateway.config import AdminConfig, RateLimitsConfig, RouteConfig

    admin: dict[str, object] = {"host": "127.0.0.1", "port": setup.admin_port}
    if "token_file" in AdminConfig.model_fields:
        # Else the gateway would make and save an admin token inside the work tree.
        admin["token_file"] = str(workdir / "admin-token")
    if setup.admin_token is not None:
        admin["token"] = setup.admin_token
    route: dict[str, object] = {"path": "/{rest:.*}", "upstream": "up"}
    if variant.jwt:
        route["auth"] = ["key", "oauth"]
    elif variant.auth:
        route["auth"] = "key"
    elif "auth" in RouteConfig.model_fields:
        # The benchmark measures the proxy path; API-key checks would answer 401 to wrk.
        route["auth"] = "none"
    if variant.scope:
        route["scopes"] = [BENCH_SCOPE]
    store: dict[str, object]
    if variant.redis:
        store = {"backend": "redis", "url": setup.redis_urls[0], "key_prefix": "bench"}
        if variant.cluster:
            store = {"backend": "redis", "cluster": True, "urls": list(setup.redis_urls)}
    else:
        # Kept in the temp dir so a run leaves no state in the work tree. A keyed variant gets
        # a file of its own: the org it makes would already exist in another's.
        db = f"{_slug(name)}-state.db" if variant.auth else "state.db"
        store = {"backend": "local", "path": str(workdir / db)}
    config: dict[str, object] = {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": admin,
        "workers": 1,
        "store": store,
        # A short drain so stopping the gateway between contenders is quick.
        "server": {"drain_timeout": 2},
        "log": {"level": "info", "format": "json", "access_log": variant.access_log},
    }
    if variant.auth:
        plan: dict[str, object] = {"rate_limit": NEVER_REFUSE} if variant.limits else {}
        config["plans"] = {BENCH_PLAN: plan}
    if variant.limits and "on_store_error" in RateLimitsConfig.model_fields:
        # A store failure must show as 503s in the table, not as a silent switch to local
        # limits that would make the store look free.
        config["rate_limits"] = {"on_store_error": "closed"}
    if variant.jwt:
        if setup.jwk is None:
            raise BenchError(f"{name}: no token issuer key for the oauth section")
        config["oauth"] = {
            "issuer": BENCH_ISSUER,
            "audience": BENCH_AUDIENCE,
            # Inline: the run fetches nothing, so no JWKS server's latency is in the figures.
            "jwks": {"keys": [dict(setup.jwk)]},
            "algorithms": ["RS256"],
            "org_claim": "org_id",
        }
    config["upstreams"] = {"up": {"targets": [f"http://127.0.0.1:{upstream_port}"]}}
    config["routes"] = [route]
    path = workdir / f"{_slug(name)}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def admin_post(name: str, setup: GatewaySetup, path: str, body: Mapping[str, object]) -> object:
    """POST to the admin API; the answer's `data`, or a BenchError naming the step."""
    conn = http.client.HTTPConnection("127.0.0.1", setup.admin_port, timeout=10)
    headers = {
        "Authorization": f"Bearer {setup.admin_token}",
        "Content-Type": "application/json",
    }
    try:
        conn.request("POST", path, body=json.dumps(body), headers=headers)
        response = conn.getresponse()
        raw = response.read()
    except OSError as exc:
        raise BenchError(f"{name}: POST {path} failed: {exc}") from None
    finally:
        conn.close()
    # A refusal carries no secret (only a 201 to key creation does), so it can be shown.
    if response.status != 201:
        raise BenchError(f"{name}: POST {path} got {response.status} {raw[:300]!r}, not 201")
    try:
        return json.loads(raw)["data"]
    except (ValueError, KeyError, TypeError):
        raise BenchError(f"{name}: POST {path}: no data in the answer") from None


def create_bench_org(name: str, setup: GatewaySetup) -> None:
    org = {"slug": BENCH_ORG, "name": "Bench", "plan": BENCH_PLAN}
    admin_post(name, setup, "/admin/orgs", org)


def create_bench_key(name: str, setup: GatewaySetup, scopes: Sequence[str] = ()) -> str:
    """A key of the bench org, made through the admin API; the secret."""
    body = {"name": "bench", "scopes": list(scopes)} if scopes else {"name": "bench"}
    key = admin_post(name, setup, f"/admin/orgs/{BENCH_ORG}/keys", body)
    secret = key.get("secret") if isinstance(key, dict) else None
    if not isinstance(secret, str) or not secret:
        raise BenchError(f"{name}: the key creation answer has no data.secret")
    return secret


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def check_gateway(
    name: str,
    port: int,
    variant: GatewayVariant,
    key_headers: dict[str, str],
    unscoped_headers: dict[str, str] | None = None,
    forged_headers: dict[str, str] | None = None,
) -> None:
    """The start-up probe, plus proof that the variant's features are really on: a contender
    whose auth or limits were silently off would measure the plain proxy under another name.
    key_headers carry the load's credential (the JWT for a jwt variant), unscoped_headers the
    same kind without the route's scope, forged_headers a token signed by a key not trusted."""
    credential = "JWT" if variant.jwt else "key"
    response = probe(name, port, key_headers)
    if not response.getheader("X-Request-Id"):
        raise BenchError(f"{name}: the probe's answer has no X-Request-Id")
    if variant.auth:
        refused, _ = _get(name, port, {})
        if refused.status != 401:
            raise BenchError(f"{name}: a request without credentials got {refused.status}, not 401")
    if forged_headers is not None:
        refused, _ = _get(name, port, forged_headers)
        if refused.status != 401:
            raise BenchError(
                f"{name}: a JWT signed by another key got {refused.status}, not 401:"
                " the token's signature is not checked"
            )
    if unscoped_headers is not None:
        refused, _ = _get(name, port, unscoped_headers)
        if refused.status != 403:
            raise BenchError(
                f"{name}: a {credential} without {BENCH_SCOPE} got {refused.status}, not 403:"
                " the route's scope is not checked"
            )
    if variant.limits and response.getheader("RateLimit") is None:
        raise BenchError(f"{name}: the probe's answer has no RateLimit header: no limit applied")


# Label values may hold braces (a route named /{rest:.*}): the labels end at the line's last one.
_REQUESTS_SAMPLE = re.compile(r"^gateway_requests_total(?:\{.*\})?[ \t]+(\S+)$", re.MULTILINE)


def check_metrics(name: str, admin_port: int, measured: int) -> None:
    """After the load, /metrics must answer and its request counter must have counted at least
    the requests the load generator saw answered (the warm-ups' come on top)."""
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        text = response.read().decode(errors="replace")
    except OSError as exc:
        raise BenchError(f"{name}: GET /metrics failed: {exc}") from None
    finally:
        conn.close()
    if response.status != 200:
        raise BenchError(f"{name}: GET /metrics got {response.status}, not 200")
    counted = sum(float(m.group(1)) for m in _REQUESTS_SAMPLE.finditer(text))
    if counted < measured:
        raise BenchError(
            f"{name}: /metrics counted {counted:,.0f} requests in gateway_requests_total,"
            f" fewer than the {measured:,} measured"
        )


@dataclass(frozen=True)
class Started:
    """A contender ready for load."""

    port: int
    child: Child | None = None  # None for direct
    stdout: Path | None = None  # captured stdout, if any, to report the gateway's warnings
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request
    helpers: tuple[Child, ...] = ()  # processes it needs (Redis), stopped after it
    admin_port: int | None = None  # a gateway's, whose /metrics is checked after the load


def start_contender(procs: Processes, name: str, upstream_port: int) -> Started:
    """Start the contender, check it answers as it should, and say how to load it."""
    if name == "direct":
        probe(name, upstream_port)
        return Started(upstream_port)
    port = free_port()
    if name == "aiohttp-bare":
        upstream = f"http://127.0.0.1:{upstream_port}"
        argv = [sys.executable, str(BENCH / "bare_proxy.py"), "--port", str(port)]
        child = procs.start(name, [*argv, "--upstream", upstream])
        wait_for_port(child, port)
        probe(name, port)
        return Started(port, child)
    if name == "python-floor":
        argv = [sys.executable, str(BENCH / "floor_proxy.py"), "--port", str(port)]
        child = procs.start(name, [*argv, "--upstream-port", str(upstream_port)])
        wait_for_port(child, port)
        probe(name, port)
        return Started(port, child)
    if name == "nginx-proxy":
        child = start_nginx(procs, name, port, proxy_server(port, upstream_port))
        probe(name, port)
        return Started(port, child)
    if name in GATEWAYS:
        return start_gateway(procs, name, GATEWAYS[name], port, upstream_port)
    raise BenchError(f"unknown contender {name!r}")


def start_gateway(
    procs: Processes, name: str, variant: GatewayVariant, port: int, upstream_port: int
) -> Started:
    helpers: list[Child] = []
    redis_urls: list[str] = []
    if variant.cluster:
        redis_urls, helpers = start_redis_cluster(procs)
    elif variant.redis:
        redis_url, redis = start_redis(procs)
        redis_urls, helpers = [redis_url], [redis]
    # A fresh random admin token per run: the harness is the only client of the admin API.
    token = secrets.token_urlsafe(24) if variant.auth else None
    issuer = TokenIssuer() if variant.jwt else None
    setup = GatewaySetup(
        admin_port=free_port(),
        admin_token=token,
        redis_urls=redis_urls,
        jwk=None if issuer is None else issuer.public_jwk,
    )
    config = gateway_config(procs.workdir, name, port, upstream_port, variant, setup)
    # Without the access log, stdout carries only warnings and errors: keep them to report.
    # With it, /dev/null: the cost measured is formatting and writing, not a disk.
    stdout = None if variant.access_log else procs.workdir / f"{_slug(name)}.stdout"
    argv = [sys.executable, "-m", "gateway", "run", "-c", str(config)]
    child = procs.start(name, argv, stdout=stdout)
    # A failure here ends the run, and Processes stops the gateway and its Redis.
    wait_for_port(child, port)
    wait_for_port(child, setup.admin_port)
    headers: dict[str, str] = {}
    unscoped = forged = None
    if variant.auth:
        create_bench_org(name, setup)
    if issuer is not None:
        # The org's slug is in the tokens: it is known to the gateway from here on.
        headers = _bearer(issuer.token(BENCH_SCOPE if variant.scope else None))
        if variant.scope:
            unscoped = _bearer(issuer.token(None))
        forged = _bearer(TokenIssuer().token())
    elif variant.auth:
        scopes = [BENCH_SCOPE] if variant.scope else []
        headers = _bearer(create_bench_key(name, setup, scopes))
        if variant.scope:
            unscoped = _bearer(create_bench_key(name, setup))
    check_gateway(name, port, variant, headers, unscoped, forged)
    return Started(port, child, stdout, headers, tuple(helpers), setup.admin_port)


# ---------------------------------------------------------------------------------------------
# Load generators.


def _to_ms(value: str, unit: str) -> float:
    return float(value) * _UNIT_MS[unit]


def parse_wrk(output: str) -> Measurement:
    rps = _WRK_RPS.search(output)
    latencies = {m.group(1): _to_ms(m.group(2), m.group(3)) for m in _WRK_LATENCY.finditer(output)}
    total = _WRK_TOTAL.search(output)
    if rps is None or "50" not in latencies or "99" not in latencies or total is None:
        raise BenchError(f"cannot parse wrk output:\n{output}")
    non_2xx = _WRK_NON_2XX.search(output)
    sockets = _WRK_SOCKET.search(output)
    errors: dict[str, int] = {}
    if sockets is not None:
        kinds = ("connect", "read", "write", "timeout")
        errors = {k: int(v) for k, v in zip(kinds, sockets.groups(), strict=True) if int(v)}
    return Measurement(
        rps=float(rps.group(1)),
        p50_ms=latencies["50"],
        p99_ms=latencies["99"],
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=errors,
    )


def _header_args(headers: dict[str, str]) -> list[str]:
    # The same `-H 'Name: value'` form for wrk and for bench/loadgen.py.
    return [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]


def run_wrk(
    url: str, connections: int, duration: int, headers: dict[str, str] | None = None
) -> Measurement:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    argv += [*_header_args(headers or {}), url]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration + LOAD_GRACE, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return parse_wrk(done.stdout)


def run_python_load(
    url: str, connections: int, duration: int, headers: dict[str, str] | None = None
) -> Measurement:
    argv = [sys.executable, str(BENCH / "loadgen.py"), url]
    argv += ["--connections", str(connections), "--duration", str(duration)]
    argv += _header_args(headers or {})
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration + LOAD_GRACE, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"loadgen failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return Measurement(
        rps=float(data["rps"]),
        p50_ms=float(data["p50_ms"]),
        p99_ms=float(data["p99_ms"]),
        requests=int(data["requests"]),
        non_2xx=int(data["non_2xx_3xx"]),
        socket_errors={"error": int(data["errors"])} if data["errors"] else {},
    )


def wrk_version() -> str:
    # wrk has no --version; its usage banner names the version, on stdout or stderr.
    done = subprocess.run(
        ["wrk", "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    m = re.search(r"wrk\s+(?:\S+/)?([\d.]+)", done.stdout + done.stderr)
    return m.group(1) if m else "unknown"


# ---------------------------------------------------------------------------------------------
# Profiling: py-spy samples a gateway contender while it is under the measured load.


def py_spy() -> str:
    # Installed into the venv by pip, so it may sit beside the interpreter and not on PATH.
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise BenchError("--profile needs py-spy (pip install py-spy); it is not installed")
    return found


def start_profiler(procs: Processes, out: Path, name: str, target: Child, seconds: int) -> Child:
    """py-spy on the contender for the measured run only, into out: raw collapsed stacks, which
    flamegraph.pl and speedscope both read, one line per stack with its sample count."""
    argv = [py_spy(), "record", "--pid", str(target.proc.pid), "--duration", str(seconds)]
    argv += ["--format", "raw", "--subprocesses", "--output", str(out)]
    return procs.start(f"{name} py-spy", argv)


def finish_profiler(procs: Processes, recorder: Child, seconds: int) -> None:
    """Wait for py-spy to write its file: it stops on its own after its duration."""
    try:
        recorder.proc.wait(timeout=seconds + LOAD_GRACE)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{recorder.name} did not finish in {seconds + LOAD_GRACE:g}s") from None
    finally:
        procs.stop(recorder.proc)
    if recorder.proc.returncode != 0:
        raise BenchError(recorder.describe_exit())


# ---------------------------------------------------------------------------------------------
# Report.


def gateway_problems(stdout: Path | None) -> tuple[str, ...]:
    """Warning and error events the gateway logged during its run, counted by event name."""
    if stdout is None or not stdout.exists():
        return ()
    counts: Counter[str] = Counter()
    for line in stdout.read_bytes().splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("level") in ("warning", "error", "critical"):
                what = f"{event.get('level')} {event.get('event')}"
                # A traceback's last line names the exception, which is what tells causes apart.
                trace = str(event.get("exception") or "").strip().splitlines()
                counts[f"{what} ({trace[-1]})" if trace else what] += 1
    return tuple(
        f"logged {n}x {what} (warm-up and run together)" for what, n in counts.most_common()
    )


def _ratio(value: float, base: Row | None) -> str:
    if base is None or base.result.rps <= 0:
        return "n/a"
    return f"{value / base.result.rps:.2f}x"


def render_table(rows: Sequence[Row]) -> list[str]:
    by_name = {row.name: row for row in rows}
    columns = ["contender", "requests/s", "p50 ms", "p99 ms", "vs direct", "vs aiohttp-bare"]
    columns.append("CPU µs/request")
    show_non_2xx = any(row.result.non_2xx for row in rows)
    show_errors = any(row.result.errors for row in rows)
    if show_non_2xx:
        columns.append("non-2xx/3xx")
    if show_errors:
        columns.append("socket errors")
    table: list[list[str]] = []
    for row in rows:
        r = row.result
        cells = [
            row.name,
            f"{r.rps:,.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            _ratio(r.rps, by_name.get("direct")),
            _ratio(r.rps, by_name.get("aiohttp-bare")),
            "n/a" if r.cpu_us is None else f"{r.cpu_us:,.0f}",
        ]
        if show_non_2xx:
            cells.append(f"{r.non_2xx:,}")
        if show_errors:
            cells.append(_socket_errors(r) or "0")
        table.append(cells)
    out = markdown_table(columns, table)
    notes = [f"- {row.name}: {note}" for row in rows for note in row.notes]
    if notes:
        out += ["", *notes]
    return out


def _socket_errors(result: Measurement) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in result.socket_errors.items())


def _faults(result: Measurement | None) -> str | None:
    """Why a contender's figures cannot meet a target: answers that were errors are cheap, and
    wrk leaves requests that timed out out of its latencies."""
    if result is None:
        return None
    faults = []
    if result.non_2xx:
        faults.append(f"{result.non_2xx:,} responses not 2xx/3xx")
    if result.errors:
        faults.append(f"socket errors: {_socket_errors(result)}")
    return "; ".join(faults) or None


def proxy_targets(rows: Sequence[Row]) -> list[Verdict]:
    """Issue 13's targets for the proxy path, judged on one table's figures; only those whose
    contenders are both in it (a run with --only may leave them out)."""
    results = {row.name: row.result for row in rows}
    bare = results.get("aiohttp-bare")
    full = results.get("gateway+full")
    plain = results.get("gateway")
    verdicts: list[Verdict] = []
    if bare is None:
        return verdicts
    if full is not None:
        verdicts += [
            ratio_target(
                f"gateway+full (full pipeline) >= {FULL_RPS_FACTOR:g}x aiohttp-bare's requests/s",
                full.rps,
                bare.rps,
                FULL_RPS_FACTOR,
                unit="requests/s",
                fault=_faults(full),
            ),
            ratio_target(
                "gateway+full p99 <= aiohttp-bare's p99",
                full.p99_ms,
                bare.p99_ms,
                FULL_P99_FACTOR,
                unit="ms",
                at_most=True,
                fault=_faults(full),
            ),
        ]
    if plain is not None:
        verdicts.append(
            ratio_target(
                f"gateway (auth: none) >= {PLAIN_RPS_FACTOR:g}x aiohttp-bare's requests/s",
                plain.rps,
                bare.rps,
                PLAIN_RPS_FACTOR,
                unit="requests/s",
                fault=_faults(plain),
            )
        )
    return verdicts


def render(tables: Mapping[int, Sequence[Row]], header: str) -> str:
    out = [header]
    for connections, rows in tables.items():
        out += ["", f"**{connections} connections**", "", *render_table(rows)]
        verdicts = proxy_targets(rows)
        if verdicts:
            out += ["", *render_verdicts("Targets (issue 13), from this table:", verdicts)]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# Main.


def connection_counts(value: str) -> tuple[int, ...]:
    """`50,256`: each count gets a table of its own, in the order given."""
    try:
        counts = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 50,256, got {value!r}") from None
    if not counts or min(counts) < 1 or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"expected distinct counts >= 1, got {value!r}")
    return counts


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--duration", type=int, default=10, help="seconds per contender and connection count"
    )
    parser.add_argument(
        "--connections",
        type=connection_counts,
        default=(50, 256),
        help="concurrent connections: one count or several, comma-separated (default 50,256)",
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="unreported seconds before each measured run"
    )
    parser.add_argument(
        "--only", help=f"comma-separated contenders to run (of: {', '.join(CONTENDERS)})"
    )
    parser.add_argument("--markdown-out", metavar="FILE", help="append the report to FILE")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="record each gateway contender with py-spy during its measured runs, into"
        " DIR/<name>-c<connections>.txt (sampling slows it: its figures are not comparable"
        " with unprofiled runs)",
    )
    parser.add_argument(
        "--loadgen", choices=("auto", "wrk", "python"), default="auto", help="auto: wrk if found"
    )
    parser.add_argument(
        "--upstream", choices=("auto", "nginx", "builtin"), default="auto", help="auto: nginx"
    )
    args = parser.parse_args(argv)
    if args.duration < 1 or args.warmup < 0:
        parser.error("--duration must be >= 1, --warmup >= 0")
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in CONTENDERS]
        if unknown or not wanted:
            parser.error(f"--only: unknown {unknown or args.only!r}; known: {CONTENDERS}")
        args.contenders = [n for n in CONTENDERS if n in wanted]
    else:
        args.contenders = list(CONTENDERS)
    return args


# url, connections, seconds, headers: what run_wrk and run_python_load take.
Load = Callable[[str, int, int, dict[str, str] | None], Measurement]


def measure(
    procs: Processes,
    name: str,
    upstream_port: int,
    args: argparse.Namespace,
    load: Load,
    profile_dir: Path | None,
) -> dict[int, Row]:
    """Start one contender and measure it at each connection count (a warm-up before each);
    its row for each count."""
    started = start_contender(procs, name, upstream_port)
    child = started.child
    url = f"http://127.0.0.1:{started.port}{BENCH_PATH}"
    results: dict[int, Measurement] = {}
    profiles: dict[int, Path] = {}
    try:
        for connections in args.connections:
            wait_until_closed(started.port)
            if args.warmup:
                load(url, connections, args.warmup, started.headers)
                wait_until_closed(started.port)
            recorder = None
            if profile_dir is not None and child is not None and name in GATEWAYS:
                out = profile_dir / f"{_slug(name)}-c{connections}.txt"
                recorder = start_profiler(procs, out, name, child, args.duration)
                profiles[connections] = out
            cpu_before = cpu_seconds(child)
            result = load(url, connections, args.duration, started.headers)
            cpu_after = cpu_seconds(child)
            if cpu_before is not None and cpu_after is not None and result.requests:
                spent = (cpu_after - cpu_before) * 1e6 / result.requests
                result = dataclasses.replace(result, cpu_us=spent)
            results[connections] = result
            if recorder is not None:
                finish_profiler(procs, recorder, args.duration)
            for proc in (child, *started.helpers):
                if proc is not None and proc.proc.poll() is not None:
                    raise BenchError(proc.describe_exit())
        if started.admin_port is not None:
            measured = sum(r.requests for r in results.values())
            check_metrics(name, started.admin_port, measured)
    finally:
        for proc in (child, *reversed(started.helpers)):
            if proc is not None:
                procs.stop(proc.proc)
    problems = gateway_problems(started.stdout)
    rows: dict[int, Row] = {}
    for connections, result in results.items():
        notes = problems
        if connections in profiles:
            notes = (f"profiled by py-spy into {profiles[connections]}", *notes)
        if result.non_2xx:
            # Refusals and errors are cheap to send: the rate would not be of the real work.
            what = f"{result.non_2xx:,} of {result.requests:,} responses were not 2xx/3xx"
            print(f"bench: {name} at {connections}: {what}", file=sys.stderr, flush=True)
            notes = (f"{what} (counted in requests/s)", *notes)
        rows[connections] = Row(name, result, notes)
        print(
            f"bench: {name} at {connections} connections: {result.rps:,.0f} requests/s,"
            f" p99 {result.p99_ms:,.2f} ms",
            file=sys.stderr,
            flush=True,
        )
    return rows


def bench(args: argparse.Namespace, argv: Sequence[str]) -> str:
    loadgen = _pick(args.loadgen, "wrk", "python")
    upstream_kind = _pick(args.upstream, "nginx", "builtin")
    have_nginx = shutil.which("nginx") is not None
    # wrk and nginx are optional: without them the run goes on, and says what it used instead.
    if args.loadgen == "auto" and loadgen != "wrk":
        print(
            "bench: wrk not found: load comes from bench/loadgen.py (Python; its ceiling is"
            " lower, so compare only with runs made the same way)",
            file=sys.stderr,
            flush=True,
        )
    if not have_nginx:
        skips = " and nginx-proxy is skipped" if "nginx-proxy" in args.contenders else ""
        print(
            f"bench: nginx not found: the upstream is bench/upstream.py{skips}",
            file=sys.stderr,
            flush=True,
        )
    # Each proxied connection holds two sockets in the proxy and one in the load generator.
    ensure_open_files(3 * max(args.connections))
    load: Load = run_wrk if loadgen == "wrk" else run_python_load
    loadgen_label = f"wrk {wrk_version()} (-t1)" if loadgen == "wrk" else "bench/loadgen.py"
    upstream_label = f"nginx {nginx_version()}" if upstream_kind == "nginx" else "builtin"
    python = ".".join(str(v) for v in sys.version_info[:3])

    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    tables: dict[int, list[Row]] = {connections: [] for connections in args.connections}
    skipped: dict[str, list[str]] = {}  # reason: contenders
    with (
        tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp,
        Processes(Path(tmp)) as procs,
    ):
        upstream_port, _ = start_upstream(procs, upstream_kind)
        probe("upstream", upstream_port)
        for name in args.contenders:
            reason = unsupported(GATEWAYS[name]) if name in GATEWAYS else None
            if name == "nginx-proxy" and not have_nginx:
                reason = "nginx not installed"
            if reason is not None:
                skipped.setdefault(reason, []).append(name)
                continue
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            for connections, row in measure(
                procs, name, upstream_port, args, load, profile_dir
            ).items():
                tables[connections].append(row)

    counts = " and ".join(str(c) for c in args.connections)
    counts += " connections (a table each)" if len(args.connections) > 1 else " connections"
    header = (
        f"**load generator:** {loadgen_label}, {counts},"
        f" {args.duration} s per contender and count after a {args.warmup} s warm-up"
        f" · **upstream:** {upstream_label} · **nproc:** {nproc()} · **Python:** {python}"
        f" · **reproduce:** `{reproduce(argv)}`"
    )
    report = render(tables, header)
    for reason, names in skipped.items():
        report += f"\nskipped ({reason}): {', '.join(names)}\n"
    return report


def main(argv: Sequence[str] | None = None) -> int:
    return run_report(parse_args, bench, argv)


if __name__ == "__main__":
    sys.exit(main())
