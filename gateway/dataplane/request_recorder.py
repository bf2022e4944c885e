"""The request log's recorder: the data plane hands it one tuple per request, and it writes them
to the store in batches, off the request's way, holding them while the store is away."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence

import structlog

from gateway.config.activity import AuditConfig, RequestLogConfig
from gateway.observability.metrics import Metrics
from gateway.store.activity_base import ActivityStore, PartlyWritten
from gateway.store.activity_models import RequestEntry, Retention
from gateway.store.base import StoreError

log = structlog.get_logger("gateway.request_log")

Row = RequestEntry  # what record() takes: one request's entry, a plain tuple

_MAX_BATCH = 5_000  # entries per write
_TRIM_EVERY = 60.0  # seconds between retention passes
_SHUTDOWN_FLUSH = 5.0  # seconds the last write may take at shutdown


def retention_of(request_log: RequestLogConfig, audit: AuditConfig) -> Retention:
    return Retention(
        requests_max_age=request_log.max_age,
        requests_max_entries=request_log.max_entries,
        audit_max_age=audit.max_age,
    )


class RequestRecorder:
    """Collects entries and writes them every ``flush_interval``; bounded by ``buffer``.

    While the store fails, entries wait (up to ``buffer``, the oldest dropped and counted
    beyond it) and are written once it is back, in the order they came.
    """

    def __init__(
        self,
        activity: ActivityStore,
        config: RequestLogConfig,
        audit: AuditConfig,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._activity = activity
        self._metrics = metrics
        self._clock = clock
        self._rows: deque[Row] = deque()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._written = metrics.request_log_entries.labels("written")
        self._dropped = metrics.request_log_entries.labels("dropped")
        self._failing = False
        self._trimmed_at = 0.0
        self._popped = 0  # entries record() dropped off the front, ever
        self.configure(config, audit)

    def configure(self, config: RequestLogConfig, audit: AuditConfig) -> None:
        """What a reload may change: on or off, the interval, the buffer, retention."""
        self.enabled = config.enabled
        self._interval = config.flush_interval
        self._buffer = config.buffer
        self._retention = retention_of(config, audit)
        set_retention = getattr(self._activity, "set_retention", None)
        if set_retention is not None:
            set_retention(self._retention)

    def record(self, row: Row) -> None:
        """One request's entry (the data plane's call: no await, no store)."""
        rows = self._rows
        rows.append(row)
        if len(rows) > self._buffer:
            rows.popleft()
            self._popped += 1
            self._dropped.inc()

    async def startup(self) -> None:
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="gateway-request-log")

    async def shutdown(self) -> None:
        """Stop, then write what is left (bounded: a store that is away loses the rest, which
        is counted as dropped). A write in progress is let finish, never cancelled: cancelled,
        it could be done in the store and still sent again here."""
        if self._task is not None:
            self._stop.set()
            await self._task
            self._task = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_SHUTDOWN_FLUSH):
                while self._rows and await self.flush():
                    pass
        if self._rows:
            self._dropped.inc(len(self._rows))
            log.warning("request_log_unwritten", entries=len(self._rows))
            self._rows.clear()

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._interval)
            # A backlog (after an outage, or past _MAX_BATCH an interval) goes out batch after
            # batch; the store's own round trips let requests in between.
            while await self.flush() and len(self._rows) >= _MAX_BATCH:
                pass
            now = self._clock()
            if now - self._trimmed_at >= _TRIM_EVERY:
                self._trimmed_at = now
                try:
                    await self._activity.trim(now, self._retention)
                except StoreError as exc:
                    log.warning("request_log_trim_failed", error=str(exc))
                except Exception:  # a bug must not end the recorder: entries keep coming
                    log.exception("request_log_trim_failed")

    async def flush(self) -> bool:
        """Write one batch; False when the store could not take all of it (what it did not
        take is kept, in order, for the next try)."""
        self._metrics.request_log_buffered.set(len(self._rows))
        if not self._rows:
            return True
        count = min(len(self._rows), _MAX_BATCH)
        batch = list(itertools.islice(self._rows, count))
        popped = self._popped
        unwritten: Sequence[RequestEntry] = ()
        written = count
        try:
            await self._activity.append_requests(batch)
        except PartlyWritten as exc:
            unwritten = exc.unwritten
            written = count - len(unwritten)
            self._unavailable(exc)
        except StoreError as exc:
            self._unavailable(exc)
            return False
        except Exception:
            # Not the store's failure but this batch's (a bug, an entry that cannot be
            # encoded): sent again it would fail again, and hold up every entry behind it.
            log.exception("request_log_batch_dropped", entries=count)
            self._dropped.inc(count)
            written = 0
        # Only now taken off: entries recorded meanwhile were appended behind the batch, and
        # any that record() dropped meanwhile came off its front.
        for _ in range(max(0, count - (self._popped - popped))):
            self._rows.popleft()
        self._written.inc(written)
        if unwritten:
            # In front again, in their order; past the buffer, the oldest go first.
            self._rows.extendleft(reversed(unwritten))
            while len(self._rows) > self._buffer:
                self._rows.popleft()
                self._dropped.inc()
            return False
        if self._failing:
            self._failing = False
            log.info("request_log_store_recovered")
        return True

    def _unavailable(self, exc: StoreError) -> None:
        if not self._failing:
            self._failing = True
            log.warning("request_log_store_unavailable", error=str(exc), held=len(self._rows))
