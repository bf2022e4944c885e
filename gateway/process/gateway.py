"""Process lifecycle: listeners, signals, graceful drain, and N workers on one port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from aiohttp import web

from gateway.config import LoadedConfig, RouteConfig
from gateway.control.listener import redacted_config, start_admin_listener
from gateway.control.plane import ControlPlane
from gateway.dataplane.chain import Plugin
from gateway.dataplane.handler import DataPlane
from gateway.dataplane.snapshot import PluginFactory, Snapshot
from gateway.http.listen import ListenError, listen
from gateway.http.server import EnvelopeServer
from gateway.keys.keyring import KeyRing
from gateway.keys.scopes import ScopePolicy
from gateway.keys.secrets import KeyFormat
from gateway.observability.log import access_log, flush_logs
from gateway.observability.metrics import Metrics
from gateway.process.bootstrap import ensure_demo
from gateway.process.echo_backend import EchoServer
from gateway.process.reload import ConfigWatcher, read_for_reload
from gateway.ratelimit.backends import LocalLimits, RedisLimits
from gateway.ratelimit.limiter import RateLimiter
from gateway.ratelimit.persistence import LocalLimitsPersistence
from gateway.store import Store, StoreError, open_store
from gateway.store.local import LocalStore
from gateway.store.redis import RedisStore
from gateway.tasks import cancel_and_wait
from gateway.webhooks.dispatcher import Dispatcher
from gateway.webhooks.http import WebhookEndpointsApi
from gateway.webhooks.stream import EventStream
from plugins.auth import AuthPlugin
from plugins.cors import CorsPlugin
from plugins.deprecation import DeprecationPlugin
from plugins.idempotency import IdempotencyPlugin
from plugins.rate_limit import RateLimitPlugin

log = structlog.get_logger("gateway")

WORKER_ENV = "GATEWAY_WORKER"
# The hash of the config the supervisor runs; a worker refuses to start with another one.
CONFIG_DIGEST_ENV = "GATEWAY_CONFIG_DIGEST"
# A worker tells its supervisor that its listener is open by writing a line to this fd.
READY_FD_ENV = "GATEWAY_READY_FD"


class GatewayProcess:
    """One process's gateway: store, key ring, built-in backends, snapshot, listeners."""

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        admin: bool = True,
        reuse_port: bool = False,
        plugins_for: PluginFactory | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.loaded = loaded
        self.clock = clock
        self.metrics = Metrics()
        self.limiter: RateLimiter | None = None
        self._limits_saver: LocalLimitsPersistence | None = None
        self._stopping = False
        self._reload_lock = asyncio.Lock()
        self._retiring: dict[asyncio.Task[None], Snapshot] = {}
        self.watcher: ConfigWatcher | None = None
        self._admin_enabled = admin
        self._reuse_port = reuse_port
        self._extra_plugins = plugins_for
        self._echo: dict[str, EchoServer] = {}
        self._data_runner: web.ServerRunner | None = None
        self._admin_runner: web.AppRunner | None = None
        config = loaded.config
        self.store: Store = open_store(config.store)
        self.key_format = KeyFormat.from_config(config.keys)
        self.scopes = ScopePolicy(config.scopes.implies)
        self.keyring = KeyRing(
            self.store,
            self.key_format,
            self.scopes,
            cache_ttl=config.keys.cache_ttl,
            last_used_interval=config.keys.last_used_interval,
            clock=clock,
        )
        self.control = ControlPlane(
            self.store, config, self.key_format, metrics=self.metrics, clock=clock
        )
        self.admin_api = self.control.admin_api
        self.webhooks = self.control.webhooks
        self.key_events = self.control.key_events
        self.webhook_api = WebhookEndpointsApi(
            self.webhooks, config.webhooks.api_path or "", config.server.body_timeout
        )
        self.dispatcher: Dispatcher | None = None
        self.event_stream: EventStream | None = None
        self.snapshot: Snapshot | None = None
        self.plane: DataPlane | None = None
        self.draining = False
        self.data_address: tuple[str, int] = ("", 0)
        self.admin_address: tuple[str, int] = ("", 0)
        self._started: list[str] = []

    def plugins_for(self, route: RouteConfig) -> list[Plugin]:
        """The plugins of one route: the core ones its config asks for, then any extra."""
        config = self.loaded.config
        plugins: list[Plugin] = [CorsPlugin(route.cors or config.cors)]
        if route.deprecation is not None:
            plugins.append(
                DeprecationPlugin(route.deprecation, self.metrics, route.label, self.clock)
            )
        if route.auth == "key":
            plugins.append(
                AuthPlugin(
                    self.keyring,
                    self.scopes,
                    required_scopes=route.scopes,
                    plans_with_api_keys=frozenset(
                        name for name, plan in config.plans.items() if plan.api_keys
                    ),
                )
            )
            if self.limiter is not None:
                plugins.append(
                    RateLimitPlugin(
                        self.limiter, config.plans, route, key_prefix=config.store.key_prefix
                    )
                )
        if route.idempotency != "off":
            plugins.append(
                IdempotencyPlugin(
                    self.store,
                    route,
                    config.idempotency,
                    self.metrics,
                    body_timeout=config.server.body_timeout,
                    clock=self.clock,
                )
            )
        if self._extra_plugins is not None:
            plugins.extend(self._extra_plugins(route))
        return plugins

    async def start(self) -> None:
        config = self.loaded.config
        await self.store.startup()
        self._started.append("store")
        await self.keyring.startup()
        self._started.append("keyring")
        shared = (
            RedisLimits(self.store.client) if isinstance(self.store, RedisStore) else LocalLimits()
        )
        self.limiter = RateLimiter(
            shared, mode=config.rate_limits.on_store_error, metrics=self.metrics, clock=self.clock
        )
        if isinstance(shared, LocalLimits) and isinstance(self.store, LocalStore):
            self._limits_saver = LocalLimitsPersistence(shared, self.store, self.clock)
            await self._limits_saver.startup()
            self._started.append("limits")
        self.dispatcher = Dispatcher(
            self.store.webhooks,
            config.webhooks,
            self.metrics,
            clock=self.clock,
            housekeeping=self.key_events.scan_if_due,
        )
        await self.dispatcher.startup()
        self._started.append("webhooks")
        self.webhooks.on_enqueue = self.dispatcher.wake
        if isinstance(self.store, RedisStore) and config.webhooks.stream:
            stream = f"{config.store.key_prefix}:{config.webhooks.stream}"
            self.event_stream = EventStream(self.store, self.webhooks, stream)
            await self.event_stream.startup()
        builtin: dict[str, list[str]] = {}
        for name, upstream in config.upstreams.items():
            if upstream.builtin == "echo":
                echo = self._echo[name] = EchoServer()
                builtin[name] = [await echo.start()]
        snapshot = self._snapshot(self.loaded, builtin)
        self.snapshot = snapshot
        await snapshot.startup()
        self.metrics.set_config(self.loaded.digest)
        self.plane = DataPlane(
            snapshot,
            self.metrics,
            access_log_enabled=config.log.access_log,
            fast_log=access_log(config.log),
        )
        server = config.server
        data_server = EnvelopeServer(
            self.plane.handle,
            keepalive_timeout=server.idle_timeout,
            header_timeout=server.header_timeout,
            max_line_size=server.max_header_size,
            max_field_size=server.max_header_size,
            max_headers=server.max_headers,
            handler_cancellation=False,
            access_log=None,  # ours is written by the data plane, with more fields
        )
        self._data_runner = web.ServerRunner(data_server, shutdown_timeout=server.drain_timeout)
        await self._data_runner.setup()
        self.data_address = await listen(
            self._data_runner, config.listen.host, config.listen.port, "listen", self._reuse_port
        )
        if self._admin_enabled:
            self._admin_runner, self.admin_address = await start_admin_listener(
                config.admin,
                header_timeout=server.header_timeout,
                registry=self.metrics.registry,
                readiness=self.readiness,
                config_view=self.config_view,
                install=self.control.install,
                reload=self.reload,
            )
        if config.reload.watch:
            self.watcher = ConfigWatcher(self.loaded.source, config.reload.interval, self.reload)
            self.watcher.start()
        log.info(
            "gateway_started",
            listen=f"{self.data_address[0]}:{self.data_address[1]}",
            admin=f"{self.admin_address[0]}:{self.admin_address[1]}"
            if self._admin_enabled
            else None,
            store=config.store.backend,
            config=self.loaded.source,
            config_hash=self.loaded.digest,
            pid=os.getpid(),
        )
        if config.demo is not None and self._admin_enabled:
            host = "localhost" if config.listen.host in ("0.0.0.0", "::") else config.listen.host  # noqa: S104 - a comparison, not a bind
            await ensure_demo(
                self.store,
                self.admin_api,
                config,
                f"http://{host}:{self.data_address[1]}",
                config_path=self.loaded.source,
                admin_address=self.admin_address,
            )

    async def reload(self) -> list[str]:
        """Build and swap in a new snapshot from the config file; the problems, if any.

        A config that fails validation, or changes what needs a restart, is refused and the
        running one keeps serving. Requests in flight finish on the snapshot they started on.
        """
        async with self._reload_lock:
            problems = await self._reload()
        self.metrics.config_reloads.labels("error" if problems else "ok").inc()
        if problems:
            log.error("config_reload_failed", problems=problems, config=self.loaded.source)
        return problems

    async def _reload(self) -> list[str]:
        if self._stopping:
            return ["the gateway is stopping"]
        loaded, problems = read_for_reload(self.loaded)
        if loaded is None:
            return problems
        config = loaded.config
        builtin = {name: [echo.url] for name, echo in self._echo.items()}
        for name, upstream in config.upstreams.items():
            if upstream.builtin == "echo" and name not in builtin:
                echo = self._echo[name] = EchoServer()
                builtin[name] = [await echo.start()]
        old_loaded = self.loaded
        self.loaded = loaded  # plugins_for reads the config in force
        snapshot: Snapshot | None = None
        try:
            snapshot = self._snapshot(loaded, builtin)
            await snapshot.startup()
        except BaseException as exc:
            self.loaded = old_loaded
            if snapshot is not None:
                await snapshot.shutdown()  # what was started of it, sessions and checks
            if not isinstance(exc, Exception):
                raise
            log.exception("config_reload_build_failed")
            return [f"the new config could not be started: {exc}"]
        old = self.snapshot
        self.snapshot = snapshot
        if self.plane is not None:
            self.plane.snapshot = snapshot  # one reference: the swap is atomic
        self.control.set_config(config)
        if self.limiter is not None:
            self.limiter.mode = config.rate_limits.on_store_error
        self.metrics.set_config(loaded.digest)
        log.info("config_reloaded", config=loaded.source, config_hash=loaded.digest)
        if old is not None:
            task = asyncio.create_task(old.retire(config.server.drain_timeout))
            self._retiring[task] = old
            task.add_done_callback(lambda t: self._retiring.pop(t, None))
        return []

    def _snapshot(self, loaded: LoadedConfig, builtin: dict[str, list[str]]) -> Snapshot:
        return Snapshot(
            loaded,
            self.metrics,
            builtin_targets=builtin,
            plugins_for=self.plugins_for,
            webhook_api=self.webhook_api,
        )

    async def readiness(self) -> dict[str, Any]:
        return {
            "status": "draining" if self.draining else "ready",
            "config_hash": self.loaded.digest,
            "store": await store_state(self.store, self.loaded.config.store.backend),
            "rate_limits": self.limiter.state() if self.limiter is not None else None,
        }

    def config_view(self) -> dict[str, Any]:
        return redacted_config(self.loaded)

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to drain_timeout), release all.

        Safe to call again (a second signal, a failed start followed by cleanup): it runs once.
        """
        if self._stopping:
            return
        self._stopping = True
        self.draining = True
        log.info("gateway_draining", drain_timeout=self.loaded.config.server.drain_timeout)
        if self.watcher is not None:
            await self.watcher.stop()
        if self._data_runner is not None:
            await self._data_runner.cleanup()
        for task, old in list(self._retiring.items()):  # snapshots a reload left draining
            await cancel_and_wait(task)
            await old.shutdown()
        if self.snapshot is not None:
            await self.snapshot.shutdown()
        for echo in self._echo.values():
            await echo.stop()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        if self.event_stream is not None:
            await self.event_stream.shutdown()
        if "webhooks" in self._started and self.dispatcher is not None:
            await self.dispatcher.shutdown()  # attempts in flight finish or are handed back
        if "keyring" in self._started:
            await self.keyring.shutdown()  # saves pending last-used times
        if "limits" in self._started and self._limits_saver is not None:
            await self._limits_saver.shutdown()  # counts survive the restart
        if "store" in self._started:
            await self.store.shutdown()
        log.info("gateway_stopped")
        flush_logs()


async def store_state(store: Store, backend: str) -> dict[str, Any]:
    """The store's health for /readyz; an outage is reported, not hidden, and not fatal."""
    try:
        async with asyncio.timeout(1.0):
            await store.ping()
        ok = True
    except (StoreError, TimeoutError):
        ok = False
    state: dict[str, Any] = {"backend": backend, "ok": ok}
    live = getattr(store, "invalidation_live", None)
    if live is not None:
        state["invalidation"] = "live" if live else "down"
    return state


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we ship
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main)


def run_gateway(loaded: LoadedConfig, *, worker: bool = False) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code."""
    if loaded.config.workers > 1 and not worker:
        from gateway.process.workers import supervise

        return run_loop(supervise(loaded))
    return run_loop(_serve(loaded, worker=worker))


def _report_listening() -> None:
    fd = os.environ.get(READY_FD_ENV)
    if fd and fd.isdigit():
        with contextlib.suppress(OSError), os.fdopen(int(fd), "wb") as pipe:
            pipe.write(b"listening\n")


async def _serve(loaded: LoadedConfig, *, worker: bool) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    expected = os.environ.get(CONFIG_DIGEST_ENV)
    if worker and expected and expected != loaded.digest:
        # The file changed since the supervisor read it: never run a mixed fleet.
        log.error(
            "gateway_start_failed",
            error="the config file changed since the gateway started; restart the gateway",
            expected_hash=expected,
            found_hash=loaded.digest,
        )
        return 1
    # Until the handler below is in place, a SIGHUP (a reload of the fleet) must not kill us.
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    process = GatewayProcess(loaded, admin=not worker, reuse_port=worker)
    try:
        await process.start()
    except (ListenError, StoreError) as exc:
        log.error("gateway_start_failed", error=str(exc))
        await process.stop()
        return 1
    except Exception:
        # Anything else is a bug or an environment problem (an unwritable token file...):
        # release what was started and say what happened, instead of dying half-way.
        log.exception("gateway_start_failed")
        await process.stop()
        return 1
    _report_listening()
    reloads: set[asyncio.Task[list[str]]] = set()

    def on_sighup() -> None:
        task = asyncio.create_task(process.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    await stop.wait()
    await process.stop()
    return 0
