"""Shared fixtures: real upstream servers, in-process and subprocess gateways, raw HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import aiohttp
import orjson
import pytest
import redis
import yaml
from aiohttp import web
from hypothesis import HealthCheck, settings

from gateway.config import LogConfig, StoreConfig, load_config, parse_config
from gateway.observability.log import configure_logging, flush_logs
from gateway.process.gateway import GatewayProcess
from gateway.store import Store, open_store
from tests.redis_cluster import RedisCluster, start_cluster

ROOT = Path(__file__).resolve().parent.parent

# Fuzzing in CI: the same examples on every run, no example database, no per-example deadline
# (CI machines are slow and shared), so a failure is a defect, never a flake. Each test sets
# its own max_examples.
settings.register_profile(
    "gateway",
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("gateway")


# ---------------------------------------------------------------------------------------------
# Hangs: a test that outlives its timeout (pyproject: timeout, signal method) fails, and the
# report says where every thread and every asyncio task was waiting.


def _await_chain(awaitable: Any) -> list[str]:
    """Where a task is suspended: each coroutine it awaits, outermost first."""
    lines = []
    while awaitable is not None:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is None:
            lines.append(f"    awaiting {awaitable!r}")
            break
        code = frame.f_code
        lines.append(f'  File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}')
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    return lines


def hang_report(frame: Any) -> str:
    """This thread's stack from ``frame`` and where each task of its running loop waits.

    pytest-timeout prints the other threads' stacks beside it.
    """
    out = [f"--- thread {threading.current_thread().name} ---"]
    stack = traceback.extract_stack(frame)
    # pytest's and pluggy's own frames (the runner, the hooks) are the same in every dump.
    ours = [f for f in stack if not any(p in f.filename for p in ("/_pytest/", "/pluggy/"))]
    out.append("".join(traceback.format_list(ours)))
    try:
        tasks = asyncio.all_tasks(asyncio.get_running_loop())
    except RuntimeError:  # no loop runs in this thread: a sync test
        tasks = set()
    for task in sorted(tasks, key=lambda t: t.get_name()):
        out.append(f"--- asyncio task {task!r} ---")
        out.extend(_await_chain(task.get_coro()))
    if not tasks:
        out.append("--- no asyncio task is pending ---")
    return "\n".join(out) + "\n"


_TIMEOUT = pytest.StashKey[Any]()


@pytest.hookimpl(hookwrapper=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> Iterator[None]:
    """Around pytest-timeout's SIGALRM handler: dump the tasks too.

    The handler raises in whatever the main thread runs (an event loop's select included),
    which fails the test.
    """
    item.stash[_TIMEOUT] = settings
    yield
    if settings.method != "signal" or not callable(fail := signal.getsignal(signal.SIGALRM)):
        return

    def dump_then_fail(signum: int, frame: Any) -> None:
        __tracebackhide__ = True
        # Again later, in case the failure raised here is swallowed (by a loop callback).
        signal.setitimer(signal.ITIMER_REAL, settings.timeout)
        writer = item.config.get_terminal_writer()
        writer.sep("+", f"Timeout after {settings.timeout}s: {item.nodeid}")
        writer.write(hang_report(frame))
        writer.flush()
        fail(signum, frame)

    signal.signal(signal.SIGALRM, dump_then_fail)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    """A teardown after a failure gets a timer of its own.

    pytest-timeout stops the timer when a test fails (for the debugger), and a teardown can
    wait on what the test hung on (a server's stop, the event loop's close).
    """
    settings = item.stash.get(_TIMEOUT, None)
    if settings is None or settings.method != "signal":
        return
    if not signal.getitimer(signal.ITIMER_REAL)[0]:  # stopped by a failure
        item.config.hook.pytest_timeout_set_timer(item=item, settings=settings)


# ---------------------------------------------------------------------------------------------
# Logs: one process-wide stream, cleared per test, so tests can read what was logged.


class _LogCapture(io.RawIOBase):
    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.data += bytes(b)
        return len(b)


_CAPTURE = _LogCapture()
configure_logging(LogConfig(level="debug"), stream=_CAPTURE)  # type: ignore[arg-type]


class LogLines:
    def __init__(self) -> None:
        _CAPTURE.data.clear()

    def raw(self) -> bytes:
        flush_logs()
        return bytes(_CAPTURE.data)

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        lines = [orjson.loads(line) for line in self.raw().splitlines() if line.strip()]
        return [line for line in lines if event is None or line.get("event") == event]


@pytest.fixture
def logs() -> LogLines:
    return LogLines()


# ---------------------------------------------------------------------------------------------
# Upstreams: real aiohttp servers on 127.0.0.1 that record what reached them.


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body_size: int
    body_sha256: str


@dataclass
class Upstream:
    url: str
    port: int
    seen: list[Seen] = field(default_factory=list)

    def header_values(self, index: int, name: str) -> list[str]:
        return [v for k, v in self.seen[index].headers if k.lower() == name.lower()]


UpstreamHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
UpstreamFactory = Callable[..., Awaitable[Upstream]]


async def _default_upstream(request: web.BaseRequest) -> web.StreamResponse:
    return web.json_response({"ok": True, "path": request.raw_path})


@pytest.fixture
async def upstream_factory() -> AsyncIterator[UpstreamFactory]:
    runners: list[web.ServerRunner] = []

    async def start(
        handler: UpstreamHandler = _default_upstream, *, record: bool = True
    ) -> Upstream:
        upstream: Upstream

        async def recording(request: web.BaseRequest) -> web.StreamResponse:
            if record:
                digest = hashlib.sha256()
                size = 0
                # Read the body only when the test's handler will not.
                if handler is _default_upstream:
                    async for chunk in request.content.iter_any():
                        size += len(chunk)
                        digest.update(chunk)
                upstream.seen.append(
                    Seen(
                        request.method,
                        request.raw_path,
                        list(request.headers.items()),
                        size,
                        digest.hexdigest(),
                    )
                )
            return await handler(request)

        runner = web.ServerRunner(web.Server(recording, access_log=None), shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        upstream = Upstream(url=f"http://127.0.0.1:{port}", port=port)
        return upstream

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def upstream(upstream_factory: UpstreamFactory) -> Upstream:
    return await upstream_factory()


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ServeRaw(Protocol):
    def __call__(self, handler: RawHandler, *, tls: ssl.SSLContext | None = None) -> Awaitable[int]:
        """Start a server whose connections ``handler`` serves (over TLS with ``tls``)."""
        ...


@pytest.fixture
async def raw_server() -> AsyncIterator[ServeRaw]:
    """Start servers on 127.0.0.1 whose connections a handler serves byte by byte (the port comes
    back): a test decides exactly when an upstream answers and how much it reads. At teardown
    every connection is cut and every handler has returned."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []
    tasks: list[asyncio.Task[None]] = []

    async def start(handler: RawHandler, *, tls: ssl.SSLContext | None = None) -> int:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            task = asyncio.current_task()
            assert task is not None
            tasks.append(task)
            # A client that goes away (or, over TLS, refuses the certificate) ends the handler.
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                await handler(reader, writer)

        server = await asyncio.start_server(tracked, "127.0.0.1", 0, ssl=tls)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
    for writer in writers:
        writer.transport.abort()
    async with asyncio.timeout(5):
        await asyncio.gather(*tasks, return_exceptions=True)
    for server in servers:
        await server.wait_closed()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_port_url() -> str:
    """A loopback URL where nothing listens (connection refused at once)."""
    return f"http://127.0.0.1:{free_port()}"


# ---------------------------------------------------------------------------------------------
# The gateway in this process, on real sockets.


@dataclass
class RunningGateway:
    process: GatewayProcess
    url: str
    admin_url: str
    session: aiohttp.ClientSession

    @property
    def port(self) -> int:
        return self.process.data_address[1]

    async def metrics(self) -> str:
        """The admin listener's /metrics, as Prometheus would scrape it."""
        async with self.session.get(f"{self.admin_url}/metrics") as r:
            assert r.status == 200
            return await r.text()


GatewayFactory = Callable[..., Awaitable[RunningGateway]]
ADMIN_TOKEN = "test-admin-token-0123456789"


def make_config(
    upstreams: dict[str, Any], routes: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    """A config for an in-process gateway; routes are public unless they say auth: key."""
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0, "token": ADMIN_TOKEN},
        "upstreams": upstreams,
        "routes": [{"auth": "none", **route} for route in routes],
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@pytest.fixture
async def gateway_factory(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    running: list[RunningGateway] = []

    async def start(
        config: dict[str, Any] | Path,
        *,
        clock: Callable[[], float] | None = None,
    ) -> RunningGateway:
        """A gateway on a config, or on a config file (which a reload reads again)."""
        if isinstance(config, Path):
            loaded = load_config(config)
        else:
            # State stays in the test's own directory unless the test says otherwise.
            store = {"path": str(tmp_path / f"state-{len(running)}.db"), **config.get("store", {})}
            admin = {"token_file": str(tmp_path / "admin-token"), **config.get("admin", {})}
            config = {**config, "store": store, "admin": admin}
            text = yaml.safe_dump(config).encode()
            loaded = parse_config(text, source="test.yaml", env=os.environ)
        process = GatewayProcess(loaded, clock=clock or time.time)
        await process.start()
        session = aiohttp.ClientSession(auto_decompress=False)
        _host, port = process.data_address
        gw = RunningGateway(
            process=process,
            url=f"http://127.0.0.1:{port}",
            admin_url=f"http://127.0.0.1:{process.admin_address[1]}",
            session=session,
        )
        running.append(gw)
        return gw

    yield start
    for gw in running:
        await gw.session.close()
        await gw.process.stop()


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory, upstream: Upstream) -> RunningGateway:
    """A gateway with a catch-all route to the recording upstream."""
    return await gateway_factory(
        make_config(
            {"app": {"targets": [upstream.url]}},
            [
                {"path": "/v1/items", "upstream": "app", "methods": ["GET", "POST"]},
                {"path": "/v1/{rest:.*}", "upstream": "app", "name": "v1"},
            ],
        )
    )


# ---------------------------------------------------------------------------------------------
# Raw HTTP: exact bytes on the wire, for what an HTTP client library would tidy up.


async def until_closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (TimeoutError if it does not)."""
    chunks = []
    async with asyncio.timeout(timeout):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
    return b"".join(chunks)


async def raw_request(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send bytes, return everything the server sends until it closes (or the timeout)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()


async def read_one_response(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """One response with a Content-Length body, without waiting for the connection to close."""
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        length = parse_response(head)[1].get("content-length", "0")
        return head + await reader.readexactly(int(length))


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


# ---------------------------------------------------------------------------------------------
# The gateway as a separate process, started through the CLI.


@dataclass
class GatewayProc:
    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def log_text(self) -> str:
        return self.log_path.read_text()


Spawn = Callable[..., GatewayProc]


def wait_until_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited early with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


@pytest.fixture
def spawn_gateway(tmp_path: Path) -> Iterator[Spawn]:
    procs: list[GatewayProc] = []

    def spawn(config: dict[str, Any], *, env: dict[str, str] | None = None) -> GatewayProc:
        port, admin_port = free_port(), free_port()
        config = {
            **config,
            "listen": {"host": "127.0.0.1", "port": port},
            "admin": {**config.get("admin", {}), "host": "127.0.0.1", "port": admin_port},
        }
        path = tmp_path / f"gateway-{len(procs)}.yaml"
        path.write_text(yaml.safe_dump(config))
        log_path = tmp_path / f"gateway-{len(procs)}.log"
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "-c", str(path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
                env={**os.environ, **(env or {})},
            )
        gp = GatewayProc(proc, port, admin_port, log_path)
        procs.append(gp)
        wait_until_listening(admin_port, proc)
        wait_until_listening(port, proc)
        return gp

    yield spawn
    for gp in procs:
        if gp.proc.poll() is None:
            gp.proc.terminate()
            try:
                gp.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                gp.proc.kill()
                gp.proc.wait()


# ---------------------------------------------------------------------------------------------
# Redis: a private server for the whole session, on its own port; nothing is saved to disk.


@dataclass
class RedisServer:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def start(self) -> None:
        self.proc = _start_redis(self.port, self.workdir)


def _start_redis(
    port: int,
    workdir: Path,
    *,
    extra: Sequence[str] = (),
    client: redis.Redis | None = None,
) -> subprocess.Popen[bytes]:
    """redis-server on 127.0.0.1:port, nothing saved; ``extra`` options, and a ``client`` that
    can reach it that way (TLS, a login) to tell when it is up."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.fail("redis-server is not installed (.ci/run installs it with apt)")
    proc = subprocess.Popen(
        [
            executable,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--logfile",
            str(workdir / "redis.log"),
            *extra,
        ],
    )
    client = client or redis.Redis(port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            client.close()
            return proc
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    workdir = tmp_path_factory.mktemp("redis")
    port = free_port()
    server = RedisServer(f"redis://127.0.0.1:{port}/0", port, _start_redis(port, workdir), workdir)
    yield server
    if server.proc.poll() is None:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A Redis Cluster for the whole session (3 masters, 3 replicas), started when first asked
    for; tests that kill its nodes start their own."""
    cluster = start_cluster(tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture(params=["redis", "cluster"])
def shared_stores(request: pytest.FixtureRequest) -> tuple[dict[str, Any], dict[str, Any]]:
    """Store sections for two gateway instances that share one dataset: on one Redis, or on a
    Redis Cluster with each instance starting from a different master."""
    prefix = unique_prefix()
    if request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        first, second = (f"redis://{node.address}" for node in cluster.masters()[:2])
        return (
            {"backend": "redis", "cluster": True, "url": first, "key_prefix": prefix},
            {"backend": "redis", "cluster": True, "url": second, "key_prefix": prefix},
        )
    server: RedisServer = request.getfixturevalue("redis_server")
    store = {"backend": "redis", "url": server.url, "key_prefix": prefix}
    return store, dict(store)


def raw_redis(store: dict[str, Any]) -> redis.Redis:
    """A client of the Redis (or the cluster) a store section names, to look at what the
    gateway wrote; a cluster's scans go over every master."""
    if store.get("cluster"):
        return cast(redis.Redis, redis.RedisCluster.from_url(store["url"]))
    return redis.Redis.from_url(store["url"])


def unique_prefix() -> str:
    """A key namespace of one test's own, so tests never see each other's data."""
    return "t" + os.urandom(6).hex()


@pytest.fixture(params=["local", "redis", "cluster"])
def store_config(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """The store section for a gateway: each test using it runs on SQLite, on Redis and on a
    Redis Cluster."""
    if request.param == "local":
        return {"backend": "local", "path": str(tmp_path / "state.db")}
    if request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        return {
            "backend": "redis",
            "cluster": True,
            "url": cluster.url,
            "key_prefix": unique_prefix(),
        }
    server: RedisServer = request.getfixturevalue("redis_server")
    return {"backend": "redis", "url": server.url, "key_prefix": unique_prefix()}


StoreFactory = Callable[[], Store]


@pytest.fixture(params=["local", "redis", "cluster"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Makes stores that share one dataset: a file, or one Redis namespace (on one Redis, or
    on a Redis Cluster)."""
    if request.param == "local":
        path = str(tmp_path / "state.db")
        return lambda: open_store(StoreConfig(backend="local", path=path))
    prefix = unique_prefix()
    if request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        config = StoreConfig(backend="redis", cluster=True, url=cluster.url, key_prefix=prefix)
        return lambda: open_store(config)
    server: RedisServer = request.getfixturevalue("redis_server")
    return lambda: open_store(StoreConfig(backend="redis", url=server.url, key_prefix=prefix))


@pytest.fixture
async def store(store_factory: StoreFactory) -> AsyncIterator[Store]:
    s = store_factory()
    await s.startup()
    yield s
    await s.shutdown()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, which the test may stop (the session's one is shared)."""
    port = free_port()
    workdir = tmp_path / "private-redis"
    workdir.mkdir()
    server = RedisServer(f"redis://127.0.0.1:{port}/0", port, _start_redis(port, workdir), workdir)
    yield server
    if server.proc.poll() is None:
        server.stop()


class FakeClock:
    """An injected clock the test moves by hand (``clock.now += 6``) instead of sleeping."""

    def __init__(self, start: float | None = None) -> None:
        self.now = start if start is not None else time.time()

    def __call__(self) -> float:
        return self.now
