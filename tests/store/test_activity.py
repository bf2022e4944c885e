"""The activity contract (request log, usage, audit): every backend passes the same suite."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest

from gateway.store import Store, new_id
from gateway.store.activity_base import BadCursor
from gateway.store.activity_models import (
    AuditEntry,
    AuditFilter,
    Page,
    RequestEntry,
    RequestFilter,
    Retention,
)

T0 = 1_800_000_000.0  # a minute boundary (divisible by 3600)


def entry(at: float, **changes: Any) -> RequestEntry:
    fields: dict[str, Any] = {
        "time": at,
        "request_id": new_id("req"),
        "org_id": "org_a",
        "key_id": "key_1",
        "method": "GET",
        "path": "/v1/items",
        "route": "items",
        "status": 200,
        "duration_ms": 1.5,
        "upstream_ms": 1.0,
        "client_ip": "203.0.113.9",
        "user_agent": "curl/8",
        "upstream": "http://127.0.0.1:9",
        "rate_limited": False,
        "idempotency": None,
    }
    fields.update(changes)
    return RequestEntry(**fields)


async def read_all(store: Store, where: RequestFilter, limit: int) -> list[RequestEntry]:
    """Every page of a listing, following cursors; a page is never larger than limit."""
    found: list[RequestEntry] = []
    cursor: str | None = None
    for _ in range(1000):
        page: Page[RequestEntry] = await store.activity.query_requests(where, limit, cursor)
        assert len(page.items) <= limit
        found += page.items
        cursor = page.next_cursor
        if cursor is None:
            return found
    raise AssertionError("the cursor never ended")


def ids(entries: Sequence[RequestEntry]) -> list[str]:
    return [e.request_id for e in entries]


async def test_entries_come_back_newest_first_whole_and_in_pages(store: Store) -> None:
    entries = [
        entry(T0 + i, org_id=f"org_{i % 5}", key_id=f"key_{i % 3}", status=[200, 404, 429][i % 3])
        for i in range(60)
    ]
    for start in range(0, 60, 20):  # three batches, as a recorder writes them
        await store.activity.append_requests(entries[start : start + 20])
    newest_first = list(reversed(entries))
    assert await store.activity.query_requests(RequestFilter(), 100) == Page(newest_first, None)
    assert ids(await read_all(store, RequestFilter(), 7)) == ids(newest_first)
    first = await store.activity.query_requests(RequestFilter(), 10)
    assert first.items == newest_first[:10]
    assert first.next_cursor is not None


@pytest.mark.parametrize(
    ("where", "wanted"),
    [
        (RequestFilter(org_id="org_2"), lambda e: e.org_id == "org_2"),
        (RequestFilter(key_id="key_1"), lambda e: e.key_id == "key_1"),
        (RequestFilter(route="other"), lambda e: e.route == "other"),
        (RequestFilter(status=404), lambda e: e.status == 404),
        (RequestFilter(status_class=4), lambda e: 400 <= e.status < 500),
        (RequestFilter(since=T0 + 10, until=T0 + 20), lambda e: T0 + 10 <= e.time < T0 + 20),
        (
            RequestFilter(org_id="org_1", status_class=2, since=T0 + 5),
            lambda e: e.org_id == "org_1" and e.status < 300 and e.time >= T0 + 5,
        ),
    ],
)
async def test_filters_find_exactly_the_matching_entries(
    store: Store, where: RequestFilter, wanted: Any
) -> None:
    entries = [
        entry(
            T0 + i,
            org_id=f"org_{i % 4}",
            key_id=f"key_{i % 3}",
            route="other" if i % 7 == 0 else "items",
            status=[200, 404, 429, 503, 201][i % 5],
        )
        for i in range(50)
    ]
    await store.activity.append_requests(entries)
    expected = [e for e in reversed(entries) if wanted(e)]
    assert expected, "the case must match something"
    assert ids(await read_all(store, where, 3)) == ids(expected)


async def test_a_cursor_from_elsewhere_is_refused(store: Store) -> None:
    for cursor in ("nonsense", "99.1-0", "-1", "", "1.2"):
        with pytest.raises(BadCursor):
            await store.activity.query_requests(RequestFilter(), 10, cursor)


async def test_usage_counts_requests_errors_and_refusals_per_bucket(store: Store) -> None:
    batch = [
        entry(T0 + 1, status=200),
        entry(T0 + 2, status=404),
        entry(T0 + 3, status=429, rate_limited=True),
        entry(T0 + 61, status=500),
        entry(T0 + 62, status=200, key_id="key_2"),
        entry(T0 + 63, status=200, org_id="org_b", key_id="key_9"),
        entry(T0 + 64, status=401, org_id=None, key_id=None),
    ]
    await store.activity.append_requests(batch[:3])
    await store.activity.append_requests(batch[3:])
    minutes = await store.activity.usage("minute", T0, T0 + 180, org_id="org_a")
    assert [(b.start, b.requests, b.errors, b.rate_limited) for b in minutes] == [
        (T0, 3, 1, 1),
        (T0 + 60, 2, 1, 0),
        (T0 + 120, 0, 0, 0),
    ]
    key = await store.activity.usage("minute", T0, T0 + 120, org_id="org_a", key_id="key_1")
    assert [(b.requests, b.errors, b.rate_limited) for b in key] == [(3, 1, 1), (1, 1, 0)]
    every = await store.activity.usage("minute", T0, T0 + 120)
    assert [(b.requests, b.errors) for b in every] == [(3, 1), (4, 2)]
    hours = await store.activity.usage("hour", T0, T0 + 3600, org_id="org_a")
    assert [(b.start, b.requests, b.errors, b.rate_limited) for b in hours] == [(T0, 5, 2, 1)]
    # Starts inside [since, until) only.
    assert [b.start for b in await store.activity.usage("minute", T0 + 1, T0 + 120)] == [T0 + 60]


def audit(at: float, action: str, org_id: str | None = "org_a") -> AuditEntry:
    return AuditEntry(
        id=new_id("aud"),
        time=at,
        actor="alice",
        action=action,
        target="key_1",
        org_id=org_id,
        before={"name": "old"},
        after={"name": "new"},
    )


async def test_audit_entries_filter_and_page(store: Store) -> None:
    entries = [
        audit(T0 + i, ["org.create", "key.create", "key.revoke"][i % 3], f"org_{i % 2}")
        for i in range(30)
    ]
    for e in entries:
        await store.activity.append_audit(e)
    page = await store.activity.query_audit(AuditFilter(), 100)
    assert page == Page(list(reversed(entries)), None)
    found: list[AuditEntry] = []
    cursor: str | None = None
    where = AuditFilter(org_id="org_1", action="key.create")
    while True:
        part = await store.activity.query_audit(where, 2, cursor)
        found += part.items
        cursor = part.next_cursor
        if cursor is None:
            break
    assert found == [e for e in reversed(entries) if where.matches(e)]
    since = await store.activity.query_audit(AuditFilter(since=T0 + 25), 100)
    assert [e.time for e in since.items] == [T0 + i for i in range(29, 24, -1)]


async def test_trim_drops_what_is_too_old_or_too_many(store: Store) -> None:
    now = time.time()
    old = [entry(now - 7200 + i) for i in range(5)]
    recent = [entry(now - 60 + i, org_id=f"org_{i}") for i in range(40)]
    await store.activity.append_requests(old)
    await store.activity.append_requests(recent)
    await store.activity.append_audit(audit(now - 10 * 86400, "key.create"))
    await store.activity.append_audit(audit(now - 10, "key.revoke"))
    retention = Retention(requests_max_age=3600, requests_max_entries=1000, audit_max_age=86400)
    await store.activity.trim(now, retention)
    kept = await read_all(store, RequestFilter(), 100)
    assert ids(kept) == ids(list(reversed(recent)))
    assert [e.action for e in (await store.activity.query_audit(AuditFilter(), 10)).items] == [
        "key.revoke"
    ]


async def test_entries_of_no_org_cannot_push_an_orgs_history_out(store: Store) -> None:
    now = time.time()
    kept = [entry(now - 100 + i * 0.01) for i in range(50)]
    flood = [entry(now - 50 + i * 0.01, org_id=None, key_id=None) for i in range(500)]
    await store.activity.append_requests(kept)
    await store.activity.append_requests(flood)
    # 1,700 in all: 100 (a seventeenth) for entries of no org.
    await store.activity.trim(now, Retention(86400, 1700, 86400))
    assert ids(await read_all(store, RequestFilter(org_id="org_a"), 1000)) == ids(kept[::-1])
    left = await read_all(store, RequestFilter(), 1000)
    anonymous = [e for e in left if e.org_id is None]
    assert 100 <= len(anonymous) <= 200  # Redis trims near its cap (MAXLEN ~), SQLite to it
    assert ids(anonymous) == ids(flood[::-1][: len(anonymous)])


async def test_a_stream_emptied_by_retention_still_takes_older_entries(store: Store) -> None:
    now = time.time()
    await store.activity.append_requests([entry(now - 10)])
    await store.activity.trim(now + 7200, Retention(3600, 1000, 86400))  # empties the log
    late = entry(now - 20)  # older than the newest the stream ever held
    await store.activity.append_requests([late])
    assert ids(await read_all(store, RequestFilter(), 10)) == [late.request_id]
