"""The process entry: the event loop, signals (SIGTERM drains, SIGHUP reloads), exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from gateway.config import LoadedConfig
from gateway.http.listen import ListenError
from gateway.process.gateway import GatewayProcess
from gateway.store import StoreError

log = structlog.get_logger("gateway")

WORKER_ENV = "GATEWAY_WORKER"
# The hash of the config the supervisor runs; a worker refuses to start with another one.
CONFIG_DIGEST_ENV = "GATEWAY_CONFIG_DIGEST"
# A worker tells its supervisor that its listener is open by writing a line to this fd.
READY_FD_ENV = "GATEWAY_READY_FD"


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
        await process.start()  # what it started is released again if it fails
    except (ListenError, StoreError) as exc:
        log.error("gateway_start_failed", error=str(exc))
        await process.stop()
        return 1
    except Exception:
        # Anything else is a bug or an environment problem (an unwritable token file...):
        # say what happened, instead of dying half-way.
        log.exception("gateway_start_failed")
        await process.stop()
        return 1
    _report_listening()
    # What start-up made (modules, the config, the snapshot) lives as long as the process. Out
    # of the collector's sight, a full collection under load takes under a millisecond where it
    # took up to 57 ms, the tail of the latency (measured with gc.callbacks under bench load).
    gc.collect()
    gc.freeze()
    # A request allocates a few hundred objects that nearly all die with it; at the default
    # threshold (700) the youngest generation is collected every few requests, and the
    # requests in flight then are promoted and traced again. 20,000 lets them die first. The
    # older generations keep their default pace: closed connections are cycles (a parser
    # holds its protocol's methods) that only a collection frees.
    gc.set_threshold(20_000, 10, 10)
    reloads: set[asyncio.Task[list[str]]] = set()

    def on_sighup() -> None:
        task = asyncio.create_task(process.reload("sighup"))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    await stop.wait()
    await process.stop()
    return 0
