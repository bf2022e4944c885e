"""Every admin API body, fuzzed: never a 500, always the envelope, and every record renders after.

Hypothesis drives a real in-process gateway on both stores. The gateway lives on the test's
event loop; the search runs in a worker thread and sends each request to that loop, so
shrinking works as usual. Deterministic (derandomize, no example database) and bounded.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import GatewayFactory, RunningGateway, Upstream, closed_port_url, make_config
from tests.helpers import ADMIN

T = TypeVar("T")
EXAMPLES = 60  # per endpoint and store: the whole file stays well under a minute
PER_FIELD = 40  # per field, for bodies of several fields

FUZZ = settings(max_examples=EXAMPLES)  # the rest is the suite's profile (tests/conftest.py)

# -- values: for each field, what it accepts (mostly) and anything at all ----------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
odd_texts = st.sampled_from(
    [
        "",
        " ",
        "acme\n",
        "a\x00b",
        "é" * 5000,
        "x" * 100_000,
        "\U0001d518\U0001d52b\u00e9\u4e2d\U0001f600",  # astral and wide characters
        "\u202eevil",
        "${GATEWAY_ADMIN_TOKEN}",
        "null",
        "1e400",
        "NaN",
    ]
)
anything = st.one_of(st.text(max_size=300), odd_texts, json_values)
names = st.text(min_size=1, max_size=60)
durations = st.one_of(
    st.builds("{}{}".format, st.integers(0, 3000), st.sampled_from(["ms", "s", "m", "h", "d"])),
    st.integers(min_value=0, max_value=10**8),
    st.floats(min_value=0, max_value=1e8),
)
wild_durations = st.one_of(
    st.from_regex(r"\A ?[0-9]{1,15}(\.[0-9]{1,4})? ?(ms|s|m|h|d) ?\Z"),
    st.floats(min_value=1e6, allow_infinity=False),  # past every bound, up to 1.8e308
    st.sampled_from(["9" * 400 + "s", "30d", "31d", "-1s", "1e3s", "1 d", "P1D"]),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    anything,
)
zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=23, minutes=59)), timezone(-timedelta(hours=23, minutes=59))]
)
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2060, 1, 1), timezones=zones
).map(datetime.isoformat)
wild_times = st.one_of(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 31, 23, 59, 59),
        timezones=st.one_of(st.none(), zones),
    ).map(datetime.isoformat),
    st.sampled_from(
        [
            "9999-12-31T23:59:59-23:59",  # the year 10000 in UTC
            "10000-01-01T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "2030-02-30T00:00:00Z",
        ]
    ),
    st.integers(min_value=-(2**64), max_value=2**64),
    anything,
)
wild_counts = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([True, "5", 1.0, 10**9, 10**9 + 1]),
    anything,
)
scope_names = st.from_regex(r"\A(\*|[a-z]{1,8}(:([a-z]{1,8}|\*)){0,2})\Z")
event_types = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,12}\Z")
wild_event_types = st.one_of(
    st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,12}\n\Z"),
    st.sampled_from(["*", "a" * 101, "a b", ""]),
    anything,
)
urls = st.builds("http://127.0.0.1:9/{}".format, st.from_regex(r"\A[a-z0-9/._-]{0,20}\Z"))
wild_urls = st.one_of(
    st.sampled_from(["https://[::1]:9/", "ftp://127.0.0.1/", "http://", "//x", "", "http://[::1"]),
    st.builds("http://127.0.0.1:9/{}".format, st.text(max_size=30)),
    st.builds("http://127.0.0.1:{}/".format, st.integers(-10, 10**6)),
    anything,
)


def nested(depth: int) -> Any:
    value: Any = 1
    for level in range(depth):
        value = {"a": value} if level % 2 else [value]
    return value


class Field:
    """What a field accepts, mostly, and what else to try in it."""

    def __init__(self, valid: st.SearchStrategy[Any], wild: st.SearchStrategy[Any] = anything):
        self.valid = valid
        self.wild = wild


def obj(
    fields: dict[str, Field], required: tuple[str, ...] = (), focus: str | None = None
) -> st.SearchStrategy[Any]:
    """Objects valid but for at most one thing: a wild value (in the focus field, if one is
    named), a missing or an extra key."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        body = {
            name: draw(field.valid)
            for name, field in fields.items()
            if name in required or name == focus or draw(st.booleans())
        }
        change = draw(st.sampled_from(["none", "wild", "wild", "wild", "drop", "extra"]))
        if change == "wild" and fields:
            name = focus or draw(st.sampled_from(sorted(fields)))
            body[name] = draw(fields[name].wild)
        elif change == "drop" and body:
            del body[draw(st.sampled_from(sorted(body)))]
        elif change == "extra":
            body[draw(st.text(max_size=10))] = draw(json_values)
        return body

    return build()


rate_limits = Field(
    obj(
        {
            "requests": Field(st.integers(1, 1000), wild_counts),
            "per": Field(durations, wild_durations),
            "burst": Field(st.integers(0, 1000), wild_counts),
        },
        required=("requests", "per"),
    )
    | st.none(),
    anything,
)

# -- bodies ------------------------------------------------------------------------------------

RAW_TOKENS = [
    b"NaN",
    b"-NaN",
    b"Infinity",
    b"-Infinity",
    b"1e400",
    b"-1e400",
    b"1e308",
    b"-0.0",
    b"123456789012345678901234567890",
    b"true",
    b"null",
    b'"\\ud800"',
    b'"\\u0000"',
    b"[" * 2000 + b"]" * 2000,
    b'{"a":' * 300 + b"1" + b"}" * 300,
    b'"' + b"x" * 300_000 + b'"',
]
RAW_BODIES = [b"", b"null", b"[]", b'"x"', b"1", b"{", b"\xff\xfe{}", b"{}{}", b"x" * 1_100_000]


class Raw(bytes):
    """A body whose repr stays short in Hypothesis's reports, however large it is."""

    def __repr__(self) -> str:
        more = f"... ({len(self)} bytes)" if len(self) > 200 else ""
        return f"Raw({bytes(self[:200])!r}{more})"


def bodies(
    fields: dict[str, Field], required: tuple[str, ...] = (), focus: str | None = None
) -> st.SearchStrategy[Raw]:
    """Mostly-valid JSON objects of these fields, and bytes that JSON cannot hold."""
    objects = st.builds(
        lambda body, ascii_only: json.dumps(body, allow_nan=False, ensure_ascii=ascii_only),
        obj(fields, required, focus),
        st.booleans(),
    ).map(str.encode)
    raw_fields = st.builds(
        lambda name, token: b'{"' + name.encode() + b'": ' + token + b"}",
        st.sampled_from(sorted(fields) or ["x"]),
        st.sampled_from(RAW_TOKENS),
    )
    weird = st.one_of(raw_fields, st.sampled_from(RAW_BODIES), st.binary(max_size=64))
    return st.one_of(objects, objects, objects, weird).map(Raw)


# -- the harness -------------------------------------------------------------------------------


class Fuzzer:
    """Sends requests to the gateway's loop from Hypothesis's thread; checks every answer."""

    def __init__(self, gw: RunningGateway, loop: asyncio.AbstractEventLoop) -> None:
        self.gw = gw
        self.loop = loop
        self.renders: list[str] = []  # admin paths that must answer 200 after every call

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    async def _call(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, Any]:
        data = io.BytesIO(body) if body is not None and len(body) > 65536 else body
        async with self.gw.session.request(
            method, url, data=data, headers={**headers, "Content-Type": "application/json"}
        ) as r:
            raw = await r.read()
            return r.status, raw

    def call(
        self, method: str, path: str, body: bytes | None = None, *, headers: dict[str, str] = ADMIN
    ) -> tuple[int, Any]:
        base = self.gw.admin_url if path.startswith("/admin") else self.gw.url
        status, raw = self.run(self._call(method, base + path, body, headers))
        assert status < 500, (method, path, body[:300] if body else body, status, raw[:500])
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise AssertionError((method, path, status, raw[:300])) from None
        if status >= 400:
            error = answer["error"]
            assert isinstance(error["code"], str), answer
            assert error["message"], answer
            assert error["request_id"], answer
            assert "Traceback" not in error["message"]
        else:
            assert "data" in answer, answer
        return status, answer

    def check_all(
        self,
        strategy: st.SearchStrategy[Raw],
        check: Callable[[Raw], None],
        examples: int = EXAMPLES,
    ) -> None:
        """Run check on the bodies Hypothesis makes.

        The store keeps what earlier examples wrote, so a failure may shrink to a body that only
        met a record an earlier one broke: the first failing body is reported as well.
        """
        first: list[Raw] = []

        @settings(FUZZ, max_examples=examples)
        @given(raw=strategy)
        def example(raw: Raw) -> None:
            try:
                check(raw)
            except Exception:
                first.append(raw)
                raise

        try:
            example()
        except Exception as exc:
            raise AssertionError(f"the first failing body was {first[0]!r}") from exc

    def use(self, secret: str) -> int:
        """A request with this key through a proxied route: its status, never a 5xx."""
        url = f"{self.gw.url}/v1/items"

        async def send() -> tuple[int, bytes]:
            async with self.gw.session.get(url, headers={"Authorization": f"Bearer {secret}"}) as r:
                return r.status, await r.read()

        status, raw = self.run(send())
        assert status < 500, (status, raw[:300])
        return status

    def fuzz(
        self,
        method: str,
        path: Callable[[], str],
        body: st.SearchStrategy[Raw],
        after: Callable[[Any], None] | None = None,
        examples: int = EXAMPLES,
        **kw: Any,
    ) -> list[Any]:
        """Search one endpoint; after is given each successful answer's data; return them."""
        made: list[Any] = []

        def check(raw: Raw) -> None:
            status, answer = self.call(method, path(), raw, **kw)
            if status < 300:
                made.append(answer["data"])
                if after is not None:
                    after(answer["data"])
            for where in self.renders:
                rendered, listed = self.call("GET", where)
                assert rendered == 200, (where, listed)

        self.check_all(body, check, examples)
        return made

    async def search(self, *args: Any, **kw: Any) -> list[Any]:
        return await asyncio.to_thread(self.fuzz, *args, **kw)

    async def search_fields(
        self,
        method: str,
        path: Callable[[], str],
        fields: dict[str, Field],
        required: tuple[str, ...] = (),
        **kw: Any,
    ) -> list[Any]:
        """One search per field, each trying wild values in that field: every field gets its
        share, however many the body has."""
        made = []
        for name in fields:
            body = bodies(fields, required, focus=name)
            made += await self.search(method, path, body, examples=PER_FIELD, **kw)
        return made


def fuzz_config(store: dict[str, Any], upstream: Upstream) -> dict[str, Any]:
    return make_config(
        {"app": {"targets": [upstream.url]}},
        [{"path": "/v1/items", "upstream": "app", "auth": "key"}],
        store=store,
        plans={"free": {}, "big": {"api_keys": True}},
        webhooks={
            "allow_private_targets": True,  # no name is ever resolved: fuzzed hosts stay offline
            "retry_schedule": ["1s"],
            "timeout": "1s",
        },
    )


async def started(
    gateway_factory: GatewayFactory, store: dict[str, Any], upstream: Upstream
) -> Fuzzer:
    gw = await gateway_factory(fuzz_config(store, upstream))
    fuzzer = Fuzzer(gw, asyncio.get_running_loop())
    body = b'{"slug": "acme", "name": "Acme", "plan": "free"}'
    async with gw.session.post(f"{gw.admin_url}/admin/orgs", data=body, headers=ADMIN) as r:
        assert r.status == 201
    return fuzzer


async def make(
    fuzzer: Fuzzer, path: str, body: dict[str, Any], headers: dict[str, str] = ADMIN
) -> Any:
    gw = fuzzer.gw
    base = gw.admin_url if path.startswith("/admin") else gw.url
    async with gw.session.post(base + path, json=body, headers=headers) as r:
        answer = await r.json()
        assert r.status == 201, answer
        return answer["data"]


# -- the tests ---------------------------------------------------------------------------------

ORG_FIELDS = {
    "slug": Field(st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?\Z"), anything),
    "name": Field(names),
    "plan": Field(st.sampled_from(["free", "big"]), st.sampled_from(["gold", "Free"]) | anything),
}
KEY_FIELDS = {
    "name": Field(names),
    "scopes": Field(
        st.lists(scope_names, max_size=4),
        st.lists(scope_names.map("{}\n".format) | anything, min_size=1, max_size=3) | anything,
    ),
    "environment": Field(st.sampled_from(["live", "test"])),
    "expiresAt": Field(st.none() | times, wild_times),
    "allowedIps": Field(
        st.lists(st.ip_addresses().map(str), max_size=3),
        st.lists(st.from_regex(r"\A[0-9./:a-f]{1,20}\Z") | anything, max_size=3) | anything,
    ),
    "rateLimit": rate_limits,
}
ENDPOINT_FIELDS = {
    "url": Field(urls, wild_urls),
    "events": Field(
        st.lists(event_types | st.just("*"), min_size=1, max_size=4),
        st.lists(wild_event_types, max_size=3) | anything,
    ),
    "description": Field(st.text(max_size=100)),
    "status": Field(st.sampled_from(["enabled", "disabled"])),
}


async def test_fuzzed_org_bodies_never_fail_the_server(
    gateway_factory: GatewayFactory, store_config: dict[str, Any], upstream: Upstream
) -> None:
    fuzzer = await started(gateway_factory, store_config, upstream)
    fuzzer.renders = ["/admin/orgs", "/admin/orgs/acme"]
    made = await fuzzer.search_fields(
        "POST", lambda: "/admin/orgs", ORG_FIELDS, required=("slug", "name", "plan")
    )
    changes = {"name": ORG_FIELDS["name"], "plan": ORG_FIELDS["plan"]}
    await fuzzer.search_fields("PATCH", lambda: "/admin/orgs/acme", changes)
    assert made  # some bodies were valid: their writes were rendered too
    for org in made:  # every org made is found by its slug
        status, body = await asyncio.to_thread(fuzzer.call, "GET", f"/admin/orgs/{org['slug']}")
        assert (status, body["data"]["id"]) == (200, org["id"])


async def test_fuzzed_key_bodies_never_fail_the_server(
    gateway_factory: GatewayFactory, store_config: dict[str, Any], upstream: Upstream
) -> None:
    fuzzer = await started(gateway_factory, store_config, upstream)
    patched = await make(fuzzer, "/admin/orgs/acme/keys", {"name": "patched"})
    revoked = await make(fuzzer, "/admin/orgs/acme/keys", {"name": "revoked"})
    fuzzer.renders = ["/admin/orgs/acme/keys", f"/admin/keys/{patched['id']}"]

    def usable(key: Any) -> None:
        # Every key made works, or is refused for its allowedIps: never a 500 on the data plane.
        assert fuzzer.use(key["secret"]) in (200, 403), key

    made = await fuzzer.search_fields(
        "POST", lambda: "/admin/orgs/acme/keys", KEY_FIELDS, required=("name",), after=usable
    )
    assert made

    def limited(key: Any) -> None:
        assert fuzzer.use(patched["secret"]) in (200, 429), key

    changes = {"name": KEY_FIELDS["name"], "rateLimit": rate_limits}
    path = f"/admin/keys/{patched['id']}"
    await fuzzer.search_fields("PATCH", lambda: path, changes, after=limited)
    await fuzzer.search("POST", lambda: f"/admin/keys/{revoked['id']}/revoke", bodies({}))


async def test_fuzzed_rotations_of_a_live_key_never_fail_the_server(
    gateway_factory: GatewayFactory, store_config: dict[str, Any], upstream: Upstream
) -> None:
    fuzzer = await started(gateway_factory, store_config, upstream)
    newest = [await make(fuzzer, "/admin/orgs/acme/keys", {"name": "k"})]
    fuzzer.renders = ["/admin/orgs/acme/keys"]

    made: list[Any] = []

    def rotate(raw: Raw) -> None:
        status, answer = fuzzer.call("POST", f"/admin/keys/{newest[-1]['id']}/rotate", raw)
        if status == 201:
            old = newest[-1]
            newest.append(answer["data"])
            made.append(answer["data"])
            # A grace always ends: the old key shows when.
            status, shown = fuzzer.call("GET", f"/admin/keys/{old['id']}")
            assert shown["data"]["expiresAt"] is not None, raw[:200]
        status, listed = fuzzer.call("GET", "/admin/orgs/acme/keys")
        assert status == 200
        # Nothing half-written: one key per successful rotation, and the newest still works.
        assert len(listed["data"]) == len(newest), (raw[:200], len(listed["data"]))
        assert fuzzer.use(newest[-1]["secret"]) == 200, raw[:200]

    graces = bodies({"grace": Field(durations, wild_durations)})
    await asyncio.to_thread(fuzzer.check_all, graces, rotate)
    assert made  # some rotations were valid, so the counts above were exercised


async def test_fuzzed_webhook_bodies_never_fail_the_server(
    gateway_factory: GatewayFactory, store_config: dict[str, Any], upstream: Upstream
) -> None:
    fuzzer = await started(gateway_factory, store_config, upstream)
    endpoint = await make(
        fuzzer, "/admin/orgs/acme/webhooks", {"url": closed_port_url(), "events": ["a.b"]}
    )
    fuzzer.renders = ["/admin/orgs/acme/webhooks", f"/admin/webhooks/{endpoint['id']}"]
    new = {k: v for k, v in ENDPOINT_FIELDS.items() if k != "status"}
    required = ("url", "events")
    made = await fuzzer.search_fields("POST", lambda: "/admin/orgs/acme/webhooks", new, required)
    assert made
    path = f"/webhooks/{endpoint['id']}"
    await fuzzer.search_fields("PATCH", lambda: f"/admin{path}", ENDPOINT_FIELDS)
    overlap = bodies({"overlap": Field(st.none() | durations, wild_durations)})
    await fuzzer.search("POST", lambda: f"/admin/webhooks/{endpoint['id']}/rotate", overlap)
    # The same operations for a key on the data plane.
    key = await make(fuzzer, "/admin/orgs/acme/keys", {"name": "w", "scopes": ["webhooks:write"]})
    bearer = {"Authorization": f"Bearer {key['secret']}"}
    await fuzzer.search_fields("POST", lambda: "/v1/webhooks", new, required, headers=bearer)
    await fuzzer.search_fields("PATCH", lambda: f"/v1{path}", ENDPOINT_FIELDS, headers=bearer)
    await fuzzer.search(
        "POST", lambda: f"/v1/webhooks/{endpoint['id']}/rotate", overlap, headers=bearer
    )


async def test_fuzzed_event_bodies_never_fail_the_server(
    gateway_factory: GatewayFactory, store_config: dict[str, Any], upstream: Upstream
) -> None:
    fuzzer = await started(gateway_factory, store_config, upstream)
    # A subscriber to every type, so each event is encoded and queued, not dropped unheard.
    endpoint = await make(
        fuzzer, "/admin/orgs/acme/webhooks", {"url": closed_port_url(), "events": ["*"]}
    )
    fuzzer.renders = [f"/admin/webhooks/{endpoint['id']}/deliveries"]
    fields = {
        "org": Field(st.just("acme"), st.sampled_from(["nope", "org_x", "ACME"]) | anything),
        "type": Field(event_types, wild_event_types),
        "data": Field(json_values, st.sampled_from([400, 254, 253, 101]).map(nested) | anything),
    }
    published = await fuzzer.search_fields("POST", lambda: "/admin/events", fields, ("org", "type"))
    assert published
    assert all(event["id"].startswith("evt_") for event in published)
