"""One gateway process: store, keys, limits, webhooks, snapshot and listeners, started and
stopped as one (the process entry, with its signals, is ``gateway.process.run``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from aiohttp import web

from gateway.config import LoadedConfig
from gateway.config.oauth import OAuthConfig
from gateway.control.listener import redacted_config, start_admin_listener
from gateway.control.plane import ControlPlane
from gateway.dataplane.handler import DataPlane
from gateway.dataplane.keys_endpoint import SelfServiceKeysApi
from gateway.dataplane.plugins import PluginServices
from gateway.dataplane.request_log_endpoint import RequestLogEndpoint
from gateway.dataplane.request_recorder import RequestRecorder
from gateway.dataplane.snapshot import Snapshot
from gateway.dataplane.token_callers import TokenCallers
from gateway.dataplane.webhooks_endpoint import WebhookEndpointsApi
from gateway.http.listen import naming_failures
from gateway.http.protocol import HttpServer
from gateway.keys.keyring import KeyRing
from gateway.keys.scopes import ScopePolicy
from gateway.keys.secrets import KeyFormat
from gateway.observability.log import access_log, flush_logs
from gateway.observability.metrics import MULTIPROCESS_ENV, Metrics
from gateway.process.bootstrap import ensure_demo
from gateway.process.echo_backend import EchoServer
from gateway.process.reload import ConfigWatcher, read_for_reload
from gateway.ratelimit.backends import LocalLimits, RedisLimits
from gateway.ratelimit.limiter import RateLimiter
from gateway.ratelimit.persistence import LocalLimitsPersistence
from gateway.ratelimit.policy import US, Decision, Limit
from gateway.store import Store, StoreError, open_store
from gateway.tasks import cancel_and_wait
from gateway.webhooks.dispatcher import Dispatcher
from gateway.webhooks.stream import EventStream

log = structlog.get_logger("gateway")


class GatewayProcess:
    """One process's gateway: store, key ring, built-in backends, snapshot, listeners."""

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        admin: bool = True,
        reuse_port: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.loaded = loaded
        self.clock = clock
        self.metrics = Metrics()
        self.limiter: RateLimiter | None = None
        self._stopping = False
        self._reload_lock = asyncio.Lock()
        self._retiring: dict[asyncio.Task[None], Snapshot] = {}
        self.watcher: ConfigWatcher | None = None
        self._admin_enabled = admin
        self._reuse_port = reuse_port
        self._echo: dict[str, EchoServer] = {}
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
        self.keys_api = self.control.keys_api
        self.webhooks = self.control.webhooks
        self.key_events = self.control.key_events
        self.webhook_api = WebhookEndpointsApi(
            self.webhooks,
            config.webhooks.api_path or "",
            config.server.body_timeout,
            audit=self.control.audit,
        )
        self.request_log_api = RequestLogEndpoint(self.store)
        self.self_service_keys = SelfServiceKeysApi(
            self.keys_api.service, self.scopes, config.server.body_timeout
        )
        self.dispatcher: Dispatcher | None = None
        self.recorder: RequestRecorder | None = None
        self.event_stream: EventStream | None = None
        self.snapshot: Snapshot | None = None
        self.plane: DataPlane | None = None
        self.data_server: HttpServer | None = None
        self.draining = False
        self._attribute_headers: set[str] = set()
        self._tokens_by_config: tuple[OAuthConfig, TokenCallers] | None = None
        self.data_address: tuple[str, int] = ("", 0)
        self.admin_address: tuple[str, int] = ("", 0)
        # What start() started, each with its release: stop() runs them in reverse order.
        self._teardown = contextlib.AsyncExitStack()

    async def _flush_metrics(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.metrics.pending.flush()

    async def start(self) -> None:
        """Start every part in order. If a step fails, what started before it is released
        again, in reverse order, and the error is raised: a failed start leaves nothing open."""
        async with contextlib.AsyncExitStack() as stack:
            await self._start(stack)
            self._teardown = stack.pop_all()

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        # Each part registers its release once it has started, so the stack holds exactly what
        # started; it runs them at stop(), or at once when a later step fails.
        config = self.loaded.config
        if os.environ.get(MULTIPROCESS_ENV):
            # A worker: the supervisor serves /metrics from the files the workers write, so
            # what requests counted is written out every second, and once more after the drain.
            stack.callback(self.metrics.pending.flush)
            flusher = asyncio.create_task(self._flush_metrics(), name="gateway-metrics-flush")
            stack.push_async_callback(cancel_and_wait, flusher)
        await self.store.startup()
        stack.push_async_callback(self.store.shutdown)
        # Stopped after the data listener has drained (so registered before it): the last
        # requests' entries are written before the store closes.
        self.recorder = RequestRecorder(
            self.store.activity, config.request_log, config.audit, self.metrics, clock=self.clock
        )
        await self.recorder.startup()
        stack.push_async_callback(self.recorder.shutdown)
        await self.keyring.startup()
        stack.push_async_callback(self.keyring.shutdown)  # saves pending last-used times
        limits_server = self.store.shared_limits()
        shared: LocalLimits | RedisLimits
        if limits_server is not None:
            shared = RedisLimits(limits_server)  # one set of counters for every instance
        else:
            shared = LocalLimits()
            saved = self.store.limit_state()
            if saved is not None:
                saver = LocalLimitsPersistence(shared, saved, self.clock)
                await saver.startup()
                stack.push_async_callback(saver.shutdown)  # counts survive the restart
        self.limiter = RateLimiter(
            shared, mode=config.rate_limits.on_store_error, metrics=self.metrics, clock=self.clock
        )
        self.control.activity_api.limit_state = limit_state(shared, self.clock)
        self.dispatcher = Dispatcher(
            self.store.webhooks,
            config.webhooks,
            self.metrics,
            clock=self.clock,
            housekeeping=self.key_events.scan_if_due,
        )
        await self.dispatcher.startup()
        # Attempts in flight finish, or are handed back for another instance to make.
        stack.push_async_callback(self.dispatcher.shutdown)
        self.webhooks.on_enqueue = self.dispatcher.wake
        stream_server = self.store.event_stream()
        if stream_server is not None and config.webhooks.stream:
            stream = f"{config.store.key_prefix}:{config.webhooks.stream}"
            self.event_stream = EventStream(stream_server, self.store, self.webhooks, stream)
            await self.event_stream.startup()
            stack.push_async_callback(self.event_stream.shutdown)
        # Registered before the data listener, so released after it: while the data listener
        # drains, /readyz on the admin listener still answers, and says "draining".
        stack.push_async_callback(self._close_admin_listener)
        stack.push_async_callback(self._stop_echo_servers)  # reloads may add some
        builtin: dict[str, list[str]] = {}
        for name, upstream in config.upstreams.items():
            if upstream.builtin == "echo":
                echo = self._echo[name] = EchoServer()
                builtin[name] = [await echo.start()]
        stack.push_async_callback(self._release_snapshots)
        snapshot = self._snapshot(self.loaded, builtin)
        self.snapshot = snapshot
        await snapshot.startup()
        self.metrics.set_config(self.loaded.digest)
        self.plane = DataPlane(
            snapshot,
            self.metrics,
            access_log_enabled=config.log.access_log,
            fast_log=access_log(config.log),
            recorder=self.recorder,
        )
        server = config.server
        data_server = self.data_server = HttpServer(
            self.plane.handle,
            header_timeout=server.header_timeout,
            idle_timeout=server.idle_timeout,
            max_field_size=server.max_header_size,
            max_headers=server.max_headers,
            render_error=self.plane.render_error,
        )
        # Its shutdown stops accepting, then lets requests in flight finish, up to drain_timeout.
        stack.push_async_callback(data_server.shutdown, server.drain_timeout)
        host, port = config.listen.host, config.listen.port
        with naming_failures("listen", host, port):
            self.data_address = await data_server.listen(host, port, reuse_port=self._reuse_port)
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
            self.watcher = ConfigWatcher(
                self.loaded.source, config.reload.interval, lambda: self.reload("file-watch")
            )
            self.watcher.start()
            stack.push_async_callback(self.watcher.stop)
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
                self.keys_api,
                config,
                f"http://{host}:{self.data_address[1]}",
                config_path=self.loaded.source,
                admin_address=self.admin_address,
            )

    async def reload(self, actor: str = "system") -> list[str]:
        """Build and swap in a new snapshot from the config file; the problems, if any.

        A config that fails validation, or changes what needs a restart, is refused and the
        running one keeps serving. Requests in flight finish on the snapshot they started on.
        ``actor``: who asked (an admin token's name, sighup, file-watch), for the audit log.
        """
        async with self._reload_lock:
            before = self.loaded.digest  # under the lock: another reload may be finishing
            problems = await self._reload()
        self.metrics.config_reloads.labels("error" if problems else "ok").inc()
        if problems:
            log.error("config_reload_failed", problems=problems, config=self.loaded.source)
        if self._admin_enabled:  # a worker's reload is its supervisor's to record
            await self.control.audit.record(
                actor, "config.reload", **reload_audit(before, self.loaded.digest, problems)
            )
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
        snapshot: Snapshot | None = None
        try:
            snapshot = self._snapshot(loaded, builtin)
            await snapshot.startup()
        except BaseException as exc:
            if snapshot is not None:
                await snapshot.shutdown()  # what was started of it, sessions and checks
            if not isinstance(exc, Exception):
                raise
            log.exception("config_reload_build_failed")
            return [f"the new config could not be started: {exc}"]
        # The config in force switches with the snapshot that serves it: until here /readyz and
        # /admin/config describe the old config, which is the one still serving.
        old = self.snapshot
        self.loaded = loaded
        self.snapshot = snapshot
        if self.plane is not None:
            self.plane.snapshot = snapshot  # one reference: the swap is atomic
        self.control.set_config(config)
        if self.limiter is not None:
            self.limiter.mode = config.rate_limits.on_store_error
        if self.recorder is not None:
            self.recorder.configure(config.request_log, config.audit)
        self.metrics.set_config(loaded.digest)
        log.info("config_reloaded", config=loaded.source, config_hash=loaded.digest)
        if old is not None:
            task = asyncio.create_task(old.retire(config.server.drain_timeout))
            self._retiring[task] = old
            task.add_done_callback(lambda t: self._retiring.pop(t, None))
        return []

    def _snapshot(self, loaded: LoadedConfig, builtin: dict[str, list[str]]) -> Snapshot:
        # The plugins are built from the registry, reading the config given here: the one the
        # snapshot is for, which is not in force yet during a reload.
        services = PluginServices(
            store=self.store,
            keyring=self.keyring,
            scopes=self.scopes,
            metrics=self.metrics,
            limiter=self.limiter,
            clock=self.clock,
            tokens=self._token_callers_for(loaded.config.oauth),
        )
        # Every attribute header this process has sent stays stripped after a reload renames
        # or drops it: its backend may still trust it.
        self._attribute_headers.update(loaded.config.identity.attribute_headers.values())
        return Snapshot(
            loaded,
            self.metrics,
            builtin_targets=builtin,
            services=services,
            webhook_api=self.webhook_api,
            request_log_api=self.request_log_api,
            keys_api=self.self_service_keys,
            retired_headers=sorted(self._attribute_headers),
        )

    def _token_callers_for(self, oauth: OAuthConfig | None) -> TokenCallers | None:
        """The token checks for a config: the running ones while its oauth section is unchanged
        (their keys and caches survive a reload), else new ones."""
        if oauth is None:
            return None
        current = self._tokens_by_config
        if current is not None and current[0] == oauth:
            return current[1]
        tokens = TokenCallers(oauth, self.keyring, self.scopes, clock=self.clock)
        self._tokens_by_config = (oauth, tokens)
        return tokens

    async def readiness(self) -> dict[str, Any]:
        return {
            "status": "draining" if self.draining else "ready",
            "config_hash": self.loaded.digest,
            "store": await store_state(self.store, self.loaded.config.store.backend),
            "rate_limits": self.limiter.state() if self.limiter is not None else None,
            # Through a key-server outage cached keys keep serving: ready, and says so.
            "oauth": tokens.state() if (tokens := self._tokens()) is not None else None,
        }

    def _tokens(self) -> TokenCallers | None:
        return self.snapshot.tokens if self.snapshot is not None else None

    def config_view(self) -> dict[str, Any]:
        return redacted_config(self.loaded)

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to drain_timeout), release all.

        Releases exactly what start() started, in reverse order. Safe to call again (a second
        signal, a failed start followed by cleanup): it runs once.
        """
        if self._stopping:
            return
        self._stopping = True
        self.draining = True
        log.info("gateway_draining", drain_timeout=self.loaded.config.server.drain_timeout)
        try:
            await self._teardown.aclose()
            log.info("gateway_stopped")
        finally:
            flush_logs()

    async def _close_admin_listener(self) -> None:
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()

    async def _stop_echo_servers(self) -> None:
        for echo in self._echo.values():
            await echo.stop()

    async def _release_snapshots(self) -> None:
        """The snapshot in force and those that reloads left draining."""
        # Under the reload lock: a reload building a snapshot now finishes first, and the
        # snapshot it swapped in is released here rather than left running.
        async with self._reload_lock:
            for task, old in list(self._retiring.items()):
                await cancel_and_wait(task)
                await old.shutdown()
            if self.snapshot is not None:
                await self.snapshot.shutdown()


def limit_state(
    limits: LocalLimits | RedisLimits, clock: Callable[[], float]
) -> Callable[[Sequence[Limit]], Awaitable[Decision]]:
    """Where limits stand now, in the counters requests use, counting nothing (cost 0)."""

    async def state(wanted: Sequence[Limit]) -> Decision:
        return await limits.decide(wanted, 0, int(clock() * US))

    return state


def reload_audit(before: str, after: str, problems: list[str]) -> dict[str, Any]:
    """A reload's audit entry: the config's hash before and after, or why it was refused."""
    result: dict[str, Any] = {"configHash": after}
    if problems:
        result = {"configHash": before, "refused": problems}
    return {"target": None, "org_id": None, "before": {"configHash": before}, "after": result}


async def store_state(store: Store, backend: str) -> dict[str, Any]:
    """The store's health for /readyz; an outage is reported, not hidden, and not fatal."""
    try:
        async with asyncio.timeout(1.0):
            await store.ping()
        ok = True
    except (StoreError, TimeoutError):
        ok = False
    state: dict[str, Any] = {"backend": backend, "ok": ok}
    live = store.invalidation_live
    if live is not None:
        state["invalidation"] = "live" if live else "down"
    try:
        topology = await store.topology()
    except (StoreError, OSError) as exc:
        topology = {"state": "unknown", "error": str(exc)}
    if topology is not None:
        state["cluster"] = topology
        if topology.get("unreachable") or topology.get("state") != "ok":
            state["ok"] = False
    return state
