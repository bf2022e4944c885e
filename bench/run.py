"""Benchmark the gateway against direct, a bare aiohttp proxy and nginx on one fast upstream.

The gateway also runs with API keys (gateway+auth) and with rate limits that never refuse,
on the local store (gateway+limits) and on a Redis the harness starts (gateway+limits+redis).
"""

# Over 400 lines: one script on purpose, so every contender's set-up sits beside the others and a
# reader compares them side by side; shared pieces (load generators, upstream) are modules beside
# it.

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CONTENDERS = (
    "direct",
    "aiohttp-bare",
    "gateway",
    "gateway+log",
    "gateway+auth",
    "gateway+limits",
    "gateway+limits+redis",
    "nginx-proxy",
)
BENCH_PATH = "/bench/path"
EXPECTED_BODY = b'{"ok":true}'
# Bounds on everything that waits, so a wedged process fails the run instead of hanging it.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
LOAD_GRACE = 30.0
# wrk prints latencies with these units; the table is in milliseconds.
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_WRK_LATENCY = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_WRK_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_WRK_NON_2XX = re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)", re.MULTILINE)
_WRK_SOCKET = re.compile(
    r"^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.MULTILINE
)
_WRK_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.MULTILINE)


class BenchError(Exception):
    """The benchmark cannot go on; the message says which step failed and why."""


@dataclass(frozen=True)
class Measurement:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int = 0
    # connect/read/write/timeout, as wrk reports them; the Python generator has one bucket.
    socket_errors: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values())


@dataclass(frozen=True)
class Row:
    name: str
    result: Measurement
    notes: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# Processes: every one started here is tracked, so all of them are stopped on any exit path.


class Processes:
    """Started child processes; each in its own session so a Ctrl-C reaches only the harness,
    which then stops them in order (terminate, then kill after STOP_TIMEOUT)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._running: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self._running[:]):
            self.stop(proc)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        stdout: Path | None = None,
        *,
        stdout_to_stderr: bool = False,
    ) -> Child:
        """Start argv; stdout goes to the file given, to the stderr log, or nowhere."""
        log = self.workdir / f"{_slug(name)}.stderr"
        with contextlib.ExitStack() as files:
            err = files.enter_context(log.open("wb"))
            out: IO[bytes] | int = subprocess.DEVNULL
            if stdout is not None:
                out = files.enter_context(stdout.open("wb"))
            elif stdout_to_stderr:
                out = err
            proc = subprocess.Popen(
                list(argv),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        self._running.append(proc)
        return Child(name, proc, log)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc in self._running:
            self._running.remove(proc)
        if proc.poll() is not None:
            return
        # The child leads its own process group: signal the group so any helper it forked
        # (none today, but a supervisor or workers would) goes too.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
                return
            except subprocess.TimeoutExpired:
                continue


@dataclass(frozen=True)
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    stderr: Path

    def describe_exit(self) -> str:
        tail = self.stderr.read_text(errors="replace").strip().splitlines()[-15:]
        detail = "\n    ".join(tail) or "(nothing on stderr)"
        return f"{self.name} exited with status {self.proc.returncode}:\n    {detail}"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def free_port() -> int:
    # The kernel picks an unused port; the tiny window before the child binds it is acceptable
    # on loopback, and a collision shows up as a start failure, not as wrong numbers.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(child: Child, port: int, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise BenchError(child.describe_exit())
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise BenchError(f"{child.name} did not accept connections on port {port} in {timeout:g}s")


def _get(name: str, port: int, headers: dict[str, str]) -> tuple[http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", BENCH_PATH, headers=headers)
        response = conn.getresponse()
        return response, response.read()
    except OSError as exc:
        raise BenchError(f"{name}: probe request failed: {exc}") from None
    finally:
        conn.close()


def probe(name: str, port: int, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    """One request before loading: a contender that answers 404 or 502 would post fine rps."""
    response, body = _get(name, port, headers or {})
    if response.status != 200 or body != EXPECTED_BODY:
        raise BenchError(f"{name}: probe got {response.status} {body[:200]!r}, not 200 OK")
    return response


# ---------------------------------------------------------------------------------------------
# nginx: the fast upstream, and the reference reverse proxy.


def nginx_version() -> str:
    out = subprocess.run(
        ["nginx", "-v"], capture_output=True, text=True, timeout=10, check=False
    ).stderr
    m = re.search(r"nginx/([\d.]+)", out)
    return m.group(1) if m else "unknown"


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def nginx_conf(prefix: Path, http_body: str) -> str:
    # Every path nginx writes is inside the prefix: no root needed, nothing left behind.
    return f"""\
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    # Never retire a keep-alive connection mid-run: reconnects would be noise in every number.
    keepalive_requests 10000000;
    keepalive_timeout 75s;
{http_body}
}}
"""


def upstream_server(port: int) -> str:
    return f"""\
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{EXPECTED_BODY.decode()}';
        }}
    }}"""


def proxy_server(port: int, upstream_port: int) -> str:
    return f"""\
    upstream backend {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""


def start_nginx(procs: Processes, name: str, port: int, http_body: str) -> Child:
    prefix = procs.workdir / _slug(name)
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, http_body))
    argv = ["nginx", "-p", f"{prefix}/", "-c", str(conf)]
    # -e (1.19.5+) keeps nginx from opening its compiled-in error log before reading the config.
    if _version_tuple(nginx_version()) >= (1, 19, 5):
        argv += ["-e", str(prefix / "error.log")]
    child = procs.start(name, argv)
    wait_for_port(child, port)
    return child


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


GATEWAYS = {
    "gateway": GatewayVariant(),
    "gateway+log": GatewayVariant(access_log=True),
    "gateway+auth": GatewayVariant(auth=True),
    "gateway+limits": GatewayVariant(auth=True, limits=True),
    "gateway+limits+redis": GatewayVariant(auth=True, limits=True, redis=True),
}
BENCH_PLAN = "bench"
BENCH_ORG = "bench"
# A sustained rate no run comes near: every request is counted, none is refused.
NEVER_REFUSE = {"requests": 1_000_000_000, "per": "1m"}


def unsupported(variant: GatewayVariant) -> str | None:
    """Why the checked-out gateway cannot run this variant, or None when it can."""
    from gateway.config import AdminConfig, PlanConfig, RouteConfig

    if variant.auth and "token" not in AdminConfig.model_fields:
        return "this gateway has no admin token setting"
    if variant.auth and "auth" not in RouteConfig.model_fields:
        return "this gateway has no API keys"
    if variant.limits and "rate_limit" not in PlanConfig.model_fields:
        return "this gateway has no rate limits"
    if variant.redis and not shutil.which("redis-server"):
        return "redis-server not installed"
    return None


@dataclass(frozen=True)
class GatewaySetup:
    """Where and how the gateway under test listens, beyond its data port."""

    admin_port: int
    admin_token: str | None = None  # set when the harness must call the admin API
    redis_url: str | None = None


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
    if variant.auth:
        route["auth"] = "key"
    elif "auth" in RouteConfig.model_fields:
        # The benchmark measures the proxy path; API-key checks would answer 401 to wrk.
        route["auth"] = "none"
    store: dict[str, object]
    if variant.redis:
        store = {"backend": "redis", "url": setup.redis_url, "key_prefix": "bench"}
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


def create_bench_key(name: str, setup: GatewaySetup) -> str:
    """An org on the bench plan and one key of it, made through the admin API; the secret."""
    org = {"slug": BENCH_ORG, "name": "Bench", "plan": BENCH_PLAN}
    admin_post(name, setup, "/admin/orgs", org)
    key = admin_post(name, setup, f"/admin/orgs/{BENCH_ORG}/keys", {"name": "bench"})
    secret = key.get("secret") if isinstance(key, dict) else None
    if not isinstance(secret, str) or not secret:
        raise BenchError(f"{name}: the key creation answer has no data.secret")
    return secret


def check_gateway(
    name: str, port: int, variant: GatewayVariant, key_headers: dict[str, str]
) -> None:
    """The start-up probe, plus proof that the variant's features are really on: a contender
    whose auth or limits were silently off would measure the plain proxy under another name."""
    response = probe(name, port, key_headers)
    if variant.auth:
        refused, _ = _get(name, port, {})
        if refused.status != 401:
            raise BenchError(f"{name}: a request without a key got {refused.status}, not 401")
    if variant.limits and response.getheader("RateLimit") is None:
        raise BenchError(f"{name}: the probe's answer has no RateLimit header: no limit applied")


# ---------------------------------------------------------------------------------------------
# Redis: the shared store of gateway+limits+redis, always one of our own.


def _redis_info(port: int) -> str:
    """INFO server, over a bare socket (RESP inline command; the reply is one bulk string)."""
    with socket.create_connection(("127.0.0.1", port), 2) as sock:
        sock.sendall(b"INFO server\r\n")
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n")
        if not head.startswith(b"$"):
            return ""
        size = int(head[1:])
        while len(rest) < size:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return rest[:size].decode(errors="replace")


def start_redis(procs: Processes) -> tuple[str, Child]:
    """A redis-server of our own on a free port, in the temp dir, persisting nothing."""
    port = free_port()
    workdir = procs.workdir / "redis"
    workdir.mkdir(exist_ok=True)
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
    child = procs.start("redis", argv, stdout_to_stderr=True)
    wait_for_port(child, port)
    # Whoever answers on the port must be the process just started, never another Redis.
    try:
        info = _redis_info(port)
    except (OSError, ValueError) as exc:
        raise BenchError(f"redis: INFO failed on port {port}: {exc}") from None
    if f"process_id:{child.proc.pid}\r\n" not in info:
        raise BenchError(f"redis: the server on port {port} is not the one the harness started")
    return f"redis://127.0.0.1:{port}/0", child


@dataclass(frozen=True)
class Started:
    """A contender ready for load."""

    port: int
    child: Child | None = None  # None for direct
    stdout: Path | None = None  # captured stdout, if any, to report the gateway's warnings
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request
    helpers: tuple[Child, ...] = ()  # processes it needs (Redis), stopped after it


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
    redis_url = None
    if variant.redis:
        redis_url, redis = start_redis(procs)
        helpers.append(redis)
    # A fresh random admin token per run: the harness is the only client of the admin API.
    token = secrets.token_urlsafe(24) if variant.auth else None
    setup = GatewaySetup(admin_port=free_port(), admin_token=token, redis_url=redis_url)
    config = gateway_config(procs.workdir, name, port, upstream_port, variant, setup)
    # Without the access log, stdout carries only warnings and errors: keep them to report.
    # With it, /dev/null: the cost measured is formatting and writing, not a disk.
    stdout = None if variant.access_log else procs.workdir / f"{_slug(name)}.stdout"
    argv = [sys.executable, "-m", "gateway", "run", "-c", str(config)]
    child = procs.start(name, argv, stdout=stdout)
    # A failure here ends the run, and Processes stops the gateway and its Redis.
    wait_for_port(child, port)
    headers: dict[str, str] = {}
    if variant.auth:
        wait_for_port(child, setup.admin_port)
        headers["Authorization"] = f"Bearer {create_bench_key(name, setup)}"
    check_gateway(name, port, variant, headers)
    return Started(port, child, stdout, headers, tuple(helpers))


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


def start_profiler(
    procs: Processes, out_dir: Path, name: str, target: Child, seconds: int
) -> Child:
    """py-spy on the contender for the measured run only; raw collapsed stacks, which
    flamegraph.pl and speedscope both read, one line per stack with its sample count."""
    out = out_dir / f"{_slug(name)}.txt"
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


def render(rows: Sequence[Row], header: str) -> str:
    by_name = {row.name: row for row in rows}
    columns = ["contender", "requests/s", "p50 ms", "p99 ms", "vs direct", "vs aiohttp-bare"]
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
        ]
        if show_non_2xx:
            cells.append(f"{r.non_2xx:,}")
        if show_errors:
            detail = ", ".join(f"{k} {v:,}" for k, v in r.socket_errors.items())
            cells.append(detail or "0")
        table.append(cells)
    out = [header, "", *markdown_table(columns, table)]
    notes = [f"- {row.name}: {note}" for row in rows for note in row.notes]
    if notes:
        out += ["", *notes]
    return "\n".join(out) + "\n"


def markdown_table(columns: Sequence[str], table: Sequence[Sequence[str]]) -> list[str]:
    """A padded markdown table: the first column left-aligned, the numbers after it right."""
    widths = [max([len(c), *(len(t[i]) for t in table)]) for i, c in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        padded = [c.rjust(w) if i else c.ljust(w) for i, (c, w) in pairs]
        return "| " + " | ".join(padded) + " |"

    # Numbers (every column but the first) are right-aligned (`---:`) so they line up as text too.
    dashes = ["-" * (w + 1) + ":" if i else "-" * (w + 2) for i, w in enumerate(widths)]
    return [line(columns), "|" + "|".join(dashes) + "|", *(line(t) for t in table)]


def nproc() -> int:
    # Like nproc(1): the CPUs this process may run on, not every CPU in the machine.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def reproduce(argv: Sequence[str], script: str = "bench/run.py") -> str:
    # `make bench` takes no flags (the target passes none), so flags mean the direct command.
    if not argv:
        return "make bench"
    return shlex.join([".venv/bin/python", script, *argv])


# ---------------------------------------------------------------------------------------------
# Main.


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=10, help="seconds per contender")
    parser.add_argument("--connections", type=int, default=50, help="concurrent connections")
    parser.add_argument("--warmup", type=int, default=2, help="unreported seconds before each")
    parser.add_argument(
        "--only", help=f"comma-separated contenders to run (of: {', '.join(CONTENDERS)})"
    )
    parser.add_argument("--markdown-out", metavar="FILE", help="append the report to FILE")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="record each gateway contender with py-spy during its run, into DIR/<name>.txt"
        " (sampling slows it: its figures are not comparable with unprofiled runs)",
    )
    parser.add_argument(
        "--loadgen", choices=("auto", "wrk", "python"), default="auto", help="auto: wrk if found"
    )
    parser.add_argument(
        "--upstream", choices=("auto", "nginx", "builtin"), default="auto", help="auto: nginx"
    )
    args = parser.parse_args(argv)
    if args.duration < 1 or args.connections < 1 or args.warmup < 0:
        parser.error("--duration and --connections must be >= 1, --warmup >= 0")
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in CONTENDERS]
        if unknown or not wanted:
            parser.error(f"--only: unknown {unknown or args.only!r}; known: {CONTENDERS}")
        args.contenders = [n for n in CONTENDERS if n in wanted]
    else:
        args.contenders = list(CONTENDERS)
    return args


def _pick(choice: str, program: str, fallback: str) -> str:
    if choice == "auto":
        return program if shutil.which(program) else fallback
    if choice == program and not shutil.which(program):
        raise BenchError(f"{program} was asked for but is not on PATH")
    return choice


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into an exception so the finally blocks stop every child process.
    raise SystemExit(128 + signum)


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
    load = run_wrk if loadgen == "wrk" else run_python_load
    loadgen_label = f"wrk {wrk_version()} (-t1)" if loadgen == "wrk" else "bench/loadgen.py"
    upstream_label = f"nginx {nginx_version()}" if upstream_kind == "nginx" else "builtin"
    python = ".".join(str(v) for v in sys.version_info[:3])

    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
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
            started = start_contender(procs, name, upstream_port)
            child = started.child
            try:
                url = f"http://127.0.0.1:{started.port}{BENCH_PATH}"
                if args.warmup:
                    load(url, args.connections, args.warmup, started.headers)
                recorder = None
                if profile_dir is not None and child is not None and name in GATEWAYS:
                    recorder = start_profiler(procs, profile_dir, name, child, args.duration)
                result = load(url, args.connections, args.duration, started.headers)
                if recorder is not None:
                    finish_profiler(procs, recorder, args.duration)
                for proc in (child, *started.helpers):
                    if proc is not None and proc.proc.poll() is not None:
                        raise BenchError(proc.describe_exit())
            finally:
                for proc in (child, *reversed(started.helpers)):
                    if proc is not None:
                        procs.stop(proc.proc)
            notes = gateway_problems(started.stdout)
            if recorder is not None:
                notes = (f"profiled by py-spy into {profile_dir}/{_slug(name)}.txt", *notes)
            if result.non_2xx:
                # Refusals and errors are cheap to send: the rate would not be of the real work.
                what = f"{result.non_2xx:,} of {result.requests:,} responses were not 2xx/3xx"
                print(f"bench: {name}: {what}", file=sys.stderr, flush=True)
                notes = (f"{what} (counted in requests/s)", *notes)
            rows.append(Row(name, result, notes))
            print(f"bench: {name}: {result.rps:,.0f} requests/s", file=sys.stderr, flush=True)

    header = (
        f"**load generator:** {loadgen_label}, {args.connections} connections,"
        f" {args.duration} s per contender after a {args.warmup} s warm-up"
        f" · **upstream:** {upstream_label} · **nproc:** {nproc()} · **Python:** {python}"
        f" · **reproduce:** `{reproduce(argv)}`"
    )
    report = render(rows, header)
    for reason, names in skipped.items():
        report += f"\nskipped ({reason}): {', '.join(names)}\n"
    return report


def run_report(
    parse: Callable[[list[str]], argparse.Namespace],
    bench: Callable[[argparse.Namespace, list[str]], str],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse, run, print the report (and append it to --markdown-out); the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        report = bench(args, argv)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; all started processes were stopped", file=sys.stderr)
        return 130
    except SystemExit:
        print("bench: terminated; all started processes were stopped", file=sys.stderr)
        raise
    print(report, end="")
    if args.markdown_out:
        with open(args.markdown_out, "a", encoding="utf-8") as out:
            out.write(report + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_report(parse_args, bench, argv)


if __name__ == "__main__":
    sys.exit(main())
