"""``workers: N``: N gateway processes on one port (SO_REUSEPORT) and one admin listener."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, multiprocess

from gateway.config import LoadedConfig
from gateway.control.listener import redacted_config, start_admin_listener
from gateway.control.plane import ControlPlane
from gateway.http.listen import ListenError
from gateway.keys.secrets import KeyFormat
from gateway.observability.log import flush_logs
from gateway.observability.metrics import MULTIPROCESS_ENV
from gateway.process.gateway import limit_state, reload_audit, store_state
from gateway.process.reload import read_for_reload
from gateway.process.run import CONFIG_DIGEST_ENV, READY_FD_ENV, WORKER_ENV
from gateway.ratelimit.backends import RedisLimits
from gateway.store import Store, StoreError, open_store

log = structlog.get_logger("gateway.supervisor")

_RESTART_DELAY = 1.0


class Supervisor:
    """Starts the workers, restarts one that dies, passes SIGTERM on and waits for the drain.

    Metrics of all workers are merged with prometheus_client's multiprocess mode, so one scrape
    of the admin listener sees the whole gateway.
    """

    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self.metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
        self._env = {
            **os.environ,
            MULTIPROCESS_ENV: self.metrics_dir,
            WORKER_ENV: "1",
            CONFIG_DIGEST_ENV: loaded.digest,
        }
        self._command = [sys.executable, "-m", "gateway", "run", "-c", loaded.source]
        self._workers: list[asyncio.subprocess.Process] = []
        self._listening: set[int] = set()  # pids that reported their listeners open
        self._watchers: set[asyncio.Task[None]] = set()
        self._draining = False
        self._admin: web.AppRunner | None = None
        config = loaded.config
        self.store: Store = open_store(config.store)
        self._store_open = False
        self.control: ControlPlane | None = None

    async def readiness(self) -> dict[str, Any]:
        alive = sum(1 for w in self._workers if w.returncode is None and w.pid in self._listening)
        configured = self.loaded.config.workers
        status = "ready" if alive == configured else "degraded"
        if self._draining:
            status = "draining"
        return {
            "status": status,
            "workers": {"configured": configured, "alive": alive},
            "config_hash": self.loaded.digest,
            "store": await store_state(self.store, self.loaded.config.store.backend),
        }

    async def reload(self, actor: str = "sighup") -> list[str]:
        """Check the config file, then have every worker reload it (SIGHUP)."""
        before = self.loaded.digest
        problems = self._reload()
        if self.control is not None:
            await self.control.audit.record(
                actor, "config.reload", **reload_audit(before, self.loaded.digest, problems)
            )
        return problems

    def _reload(self) -> list[str]:
        loaded, problems = read_for_reload(self.loaded)
        if loaded is None:
            log.error("config_reload_failed", problems=problems)
            return problems
        self.loaded = loaded
        if self.control is not None:
            self.control.set_config(loaded.config)  # plans and routes for admin validation
        self._env[CONFIG_DIGEST_ENV] = loaded.digest  # workers restarted later run it too
        for worker in self._workers:
            if worker.returncode is None:
                worker.send_signal(signal.SIGHUP)
        log.info("config_reloaded", config_hash=loaded.digest, workers=len(self._workers))
        return []

    async def _spawn(self) -> asyncio.subprocess.Process:
        """Start a worker; it writes one line to a pipe once its listener is open."""
        read_fd, write_fd = os.pipe()
        env = {**self._env, READY_FD_ENV: str(write_fd)}
        try:
            worker = await asyncio.create_subprocess_exec(
                *self._command, env=env, pass_fds=(write_fd,)
            )
        finally:
            os.close(write_fd)
        watcher = asyncio.ensure_future(self._await_listening(worker.pid, read_fd))
        self._watchers.add(watcher)  # the loop keeps only weak references to tasks
        watcher.add_done_callback(self._watchers.discard)
        return worker

    async def _await_listening(self, pid: int, read_fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb")
        )
        try:
            if await reader.readline():
                self._listening.add(pid)
        finally:
            transport.close()

    async def run(self, stop: asyncio.Event) -> int:
        config = self.loaded.config
        try:
            await self.store.startup()
        except StoreError as exc:
            log.error("gateway_start_failed", error=str(exc))
            return 1
        self._store_open = True
        key_format = KeyFormat.from_config(config.keys)
        self.control = control = ControlPlane(self.store, config, key_format)
        shared = self.store.shared_limits()
        if shared is not None:  # the workers' counters, read where they meet
            control.activity_api.limit_state = limit_state(RedisLimits(shared), time.time)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.metrics_dir)  # type: ignore[no-untyped-call] # untyped upstream
        try:
            self._admin, _ = await start_admin_listener(
                config.admin,
                header_timeout=config.server.header_timeout,
                registry=registry,
                readiness=self.readiness,
                config_view=lambda: redacted_config(self.loaded),
                install=control.install,
                reload=self.reload,
            )
        except (ListenError, OSError) as exc:
            log.error("gateway_start_failed", error=str(exc))
            return 1
        self._workers = [await self._spawn() for _ in range(config.workers)]
        log.info("supervisor_started", workers=config.workers, pid=os.getpid())
        stopping = asyncio.ensure_future(stop.wait())
        while not stop.is_set():
            exits = {asyncio.ensure_future(w.wait()): i for i, w in enumerate(self._workers)}
            done, _ = await asyncio.wait([stopping, *exits], return_when=asyncio.FIRST_COMPLETED)
            for future in exits:
                if future not in done:
                    future.cancel()
            if stop.is_set():
                break
            for future in done - {stopping}:
                index = exits[future]
                dead = self._workers[index]
                multiprocess.mark_process_dead(dead.pid, self.metrics_dir)  # type: ignore[no-untyped-call] # untyped upstream
                self._listening.discard(dead.pid)
                log.error("worker_exited", pid=dead.pid, code=dead.returncode)
                await asyncio.sleep(_RESTART_DELAY)  # a worker that cannot start must not spin
                if not stop.is_set():
                    self._workers[index] = await self._spawn()
        return 0

    async def shutdown(self) -> None:
        self._draining = True
        for worker in self._workers:
            if worker.returncode is None:
                worker.send_signal(signal.SIGTERM)
        grace = self.loaded.config.server.drain_timeout + 5
        for worker in self._workers:
            try:
                async with asyncio.timeout(grace):  # unlike wait_for, never eats a cancel
                    await worker.wait()
            except TimeoutError:
                log.error("worker_killed", pid=worker.pid, reason="drain timeout")
                with contextlib.suppress(ProcessLookupError):
                    worker.kill()
                await worker.wait()
        if self._admin is not None:
            await self._admin.cleanup()
        if self._store_open:
            await self.store.shutdown()
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        log.info("supervisor_stopped")
        flush_logs()


async def supervise(loaded: LoadedConfig) -> int:
    if not hasattr(socket, "SO_REUSEPORT"):
        log.error(
            "gateway_start_failed", error="workers > 1 needs SO_REUSEPORT (Linux, BSD, macOS)"
        )
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    supervisor = Supervisor(loaded)
    reloads: set[asyncio.Task[list[str]]] = set()

    def on_sighup() -> None:
        task = asyncio.create_task(supervisor.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    try:
        return await supervisor.run(stop)
    finally:
        await supervisor.shutdown()
