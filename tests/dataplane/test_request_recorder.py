"""The request-log recorder: batched writes, entries held through a store outage and written in
order once it is back, a bounded buffer whose overflow is counted, the last batch at shutdown."""

from __future__ import annotations

import asyncio
import time

from gateway.config import StoreConfig
from gateway.config.activity import AuditConfig, RequestLogConfig
from gateway.dataplane.request_recorder import RequestRecorder, Row
from gateway.observability.metrics import Metrics
from gateway.store import open_store
from gateway.store.activity_models import RequestFilter
from tests.conftest import RedisServer, unique_prefix
from tests.helpers import eventually


def row(n: int) -> Row:
    return Row(
        time.time(),
        f"req-{n}",
        "org_a",
        "key_1",
        "GET",
        "/v1/items",
        "items",
        200,
        1.0,
        0.5,
        "127.0.0.1",
        None,
        None,
        False,
        None,
    )


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def test_entries_wait_through_an_outage_and_overflow_is_counted(
    private_redis: RedisServer,
) -> None:
    config = StoreConfig(backend="redis", url=private_redis.url, key_prefix=unique_prefix())
    store = open_store(config)
    await store.startup()
    metrics = Metrics()
    recorder = RequestRecorder(
        store.activity, RequestLogConfig(flush_interval=0.02, buffer=100), AuditConfig(), metrics
    )
    await recorder.startup()
    try:
        for n in range(10):
            recorder.record(row(n))

        async def stored() -> list[str]:
            page = await store.activity.query_requests(RequestFilter(), 1000)
            return [e.request_id for e in page.items]

        await eventually(stored, expect=[f"req-{n}" for n in reversed(range(10))])
        private_redis.stop()
        for n in range(10, 160):  # 150 while away: the 50 oldest of them do not fit
            recorder.record(row(n))
        await asyncio.sleep(0.1)  # a few failed flushes
        assert sample(metrics, "gateway_request_log_entries_total", result="dropped") == 50
        private_redis.start()  # empty: it keeps nothing on disk
        expected = [f"req-{n}" for n in reversed(range(60, 160))]
        await eventually(stored, timeout=15, expect=expected)
        await eventually(
            lambda: sample(metrics, "gateway_request_log_entries_total", result="written"),
            expect=110,
        )
    finally:
        await recorder.shutdown()
        await store.shutdown()


async def test_shutdown_writes_what_is_left(tmp_path: object) -> None:
    store = open_store(StoreConfig(backend="local", path=f"{tmp_path}/state.db"))
    await store.startup()
    metrics = Metrics()
    # An interval longer than the test: only the shutdown can write them.
    recorder = RequestRecorder(
        store.activity, RequestLogConfig(flush_interval=10), AuditConfig(), metrics
    )
    await recorder.startup()
    for n in range(3):
        recorder.record(row(n))
    await recorder.shutdown()
    page = await store.activity.query_requests(RequestFilter(), 10)
    assert [e.request_id for e in page.items] == ["req-2", "req-1", "req-0"]
    await store.shutdown()
