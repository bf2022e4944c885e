"""Property tests of the data plane's input handling: paths, keys, headers, forwarded addresses,
and raw requests through a real gateway. Deterministic and bounded, so they run in CI."""

from __future__ import annotations

import ipaddress
import json
import random
import re
from collections.abc import AsyncIterator
from urllib.parse import unquote, unquote_to_bytes

import orjson
import pytest
from aiohttp import web
from aiohttp.http_parser import SINGLETON_HEADERS
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.config import KeysConfig
from gateway.errors import BadRequest
from gateway.http.forwarded import ForwardedResolver
from gateway.http.headers import (
    FORWARDED_FOR,
    FORWARDED_HOST,
    FORWARDED_PROTO,
    HOP_BY_HOP,
    IDENTITY_HEADERS,
    REQUEST_ID,
    apply_field_rules,
    bearer_token,
    connection_tokens,
    copy_end_to_end,
    wire_set,
)
from gateway.http.paths import compile_template, split_target
from gateway.http.request_id import accept_request_id
from gateway.keys.secrets import ALPHABET, KeyFormat
from tests.conftest import (
    GatewayFactory,
    LogLines,
    RunningGateway,
    Upstream,
    UpstreamFactory,
    make_config,
    raw_request,
)

FAST = settings(max_examples=300)  # the rest is the suite's profile (tests/conftest.py)

# ---------------------------------------------------------------------------------------------
# Paths: one canonical spelling, or BadRequest.

_HEX = "0123456789abcdefABCDEF"
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

_escapes = st.builds(lambda a, b: f"%{a}{b}", st.sampled_from(_HEX), st.sampled_from(_HEX))
_path_pieces = st.sampled_from(
    [
        *["/", "//", ".", "..", "/.", "/..", "./", "../", "...", ";", ";x=1", "\\", "\x00"],
        *["v1", "admin", "a", "Z", "~", "-", "_", ":", "@", "!", "$", "&", "'", "(", "+", ","],
        *["=", "*", " ", '"', "{", "}", "|", "^", "`", "[", "]", "<", ">", "?", "#", "é", "\uff0f"],
        *["%", "%2", "%zz", "%g0", "%u002e", "%%", "%25", "%2525", "%252e", "%252F", "%255c"],
        *["%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%00", "%3b", "%3B", "%41", "%61", "%7e"],
        *["%2e%2e", ".%2e", "%2e.", "%C3%A9", "%c3%a9", "%C3%a9", "%E2%82%AC", "%ff", "%FF"],
        # Overlong UTF-8: ".", "/", "\" and NUL in forms a lenient decoder still accepts.
        *["%C0%AE", "%c0%ae", "%C0%AF", "%c0%af", "%C1%9C", "%C0%80", "%E0%80%AE", "%e0%80%af"],
        *["%F0%80%80%AE", "%F0%80%80%AF", "%25C0%25AE", "%25c0%25af", "%C0%2E"],
    ]
)
_path_body = st.lists(st.one_of(_path_pieces, _escapes, st.text(max_size=3)), max_size=16).map(
    "".join
)
_targets = st.one_of(
    _path_body.map(lambda s: "/" + s),
    st.tuples(
        st.sampled_from(["http://h", "https://a.example:8443", "HTTP://x", "ftp://", "h://"]),
        _path_body,
    ).map("".join),
    _path_body,
    st.text(max_size=40),
    st.integers(1, 4000).map(lambda n: "/a" * n),  # very long targets
    st.tuples(_path_body, st.text(max_size=8)).map(lambda t: f"/{t[0]}?{t[1]}"),
)


def _lenient_utf8(data: bytes) -> str:
    """UTF-8 as a careless backend decodes it: overlong forms are taken at face value."""
    out: list[str] = []
    i = 0
    while i < len(data):
        lead = data[i]
        # Sequences of up to six bytes, as UTF-8 was first defined (RFC 2279).
        size = next(
            (n for n, top in enumerate((0xC0, 0xE0, 0xF0, 0xF8, 0xFC, 0xFE)) if lead < top), 0
        )
        tail = data[i + 1 : i + 1 + size]
        if size and len(tail) == size and all(0x80 <= b < 0xC0 for b in tail):
            point = lead & (0x3F >> size)
            for b in tail:
                point = point << 6 | (b & 0x3F)
            out.append(chr(point) if point < 0x110000 and not 0xD800 <= point < 0xE000 else "?")
            i += size + 1
        else:
            out.append(chr(lead) if lead < 0x80 else "?")
            i += 1
    return "".join(out)


def _backend_views(path: str) -> list[str]:
    """What backends that decode once, twice, strictly or leniently may take the path for."""
    once = unquote(path)
    return [
        once,
        unquote(once),
        _lenient_utf8(unquote_to_bytes(path)),
        _lenient_utf8(unquote_to_bytes(unquote_to_bytes(path).decode("latin-1"))),
    ]


def _upper_escapes(path: str) -> str:
    return re.sub(r"%[0-9A-Fa-f]{2}", lambda m: m.group(0).upper(), path)


def _path_of(target: str) -> str:
    """The path part of a target (absolute form dropped), as the client wrote it."""
    m = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*", target)
    if not target.startswith("/") and m is not None:
        target = target[m.end() :] or "/"
        if not target.startswith("/"):
            target = "/" + target
    return target.partition("?")[0]


@FAST
@given(_targets)
@example("/v1/%c3%a9")  # lower-case hex: the same path to a backend as %C3%A9
@example("/v1/%C0%AE%C0%AE/admin")  # overlong "..": a lenient UTF-8 decoder sees a dot segment
@example("/v1/%c0%af")  # overlong "/"
@example("/v1/%25C0%25AE%25C0%25AE/admin")  # overlong "..", encoded twice
@example("/v1/%E0%80%AE%E0%80%AE/x")
def test_an_accepted_path_is_canonical_and_means_the_same_to_every_backend(target: str) -> None:
    try:
        path, query = split_target(target)
    except BadRequest:
        return
    assert path.startswith("/")
    for forbidden in ("//", "\\", "\x00", ";", "#"):
        assert forbidden not in path
    assert query == target.partition("?")[2]
    # Escapes: well formed, upper case, never of a character that needs none.
    for escape in re.findall(r"%(..?)", path):
        assert re.fullmatch(r"[0-9A-F]{2}", escape), path
        assert chr(int(escape, 16)) not in _UNRESERVED | {"/", "\\", "\x00"}, path
    # Canonical: nothing is changed but the case of escapes, and once more changes nothing.
    assert path == _upper_escapes(_path_of(target))
    assert split_target(path) == (path, "")
    assert split_target(f"{path}?{query}") == (path, query)
    # Differential: every backend decoding sees the same segments, none of them "." or "..".
    segments = path.count("/")
    for view in _backend_views(path):
        assert view.count("/") == segments, (path, view)
        assert "\\" not in view
        assert "\x00" not in view
        assert not {".", ".."} & set(view.split("/")), (path, view)
    assert unquote(path) == unquote(_path_of(target))  # what the backend sees is what was sent


@FAST
@given(_path_body, st.randoms(use_true_random=False))
@example("/v1/caf%c3%a9", None)
def test_spellings_that_differ_in_escape_case_are_one_path(
    body: str, rnd: random.Random | None
) -> None:
    path = "/" + body.lstrip("/").replace("?", "").replace("#", "")

    def recase(m: re.Match[str]) -> str:
        if rnd is None:
            return m.group(0).upper()
        return "".join(c.upper() if rnd.random() < 0.5 else c.lower() for c in m.group(0))

    other = re.sub(r"%[0-9A-Fa-f]{2}", recase, path)
    outcomes = []
    for spelling in (path, other):
        try:
            outcomes.append(split_target(spelling))
        except BadRequest:
            outcomes.append(None)
    assert outcomes[0] == outcomes[1]


@FAST
@given(st.one_of(_path_body.map(lambda s: "/" + s), st.text(max_size=30)))
@example("/v1/caf%c3%a9")
@example("/v1/{id}/caf%c3%a9")
def test_route_templates_compile_or_fail_with_value_error(template: str) -> None:
    try:
        regex, names = compile_template(template)
    except ValueError:
        return
    assert len(set(names)) == len(names)
    if regex is None:
        # A literal route is looked up as written: it must be a canonical request path.
        assert split_target(template) == (template, "")
    assert "%" not in re.sub(r"%[0-9A-F]{2}", "", re.sub(r"\{[^}]*\}", "", template))


# ---------------------------------------------------------------------------------------------
# Keys: parsed offline, or None.

_FORMATS = [
    KeyFormat.from_config(KeysConfig()),
    KeyFormat.from_config(KeysConfig(prefix="fi_pk")),
    KeyFormat.from_config(KeysConfig(prefix="fw", environment_in_key=False)),
    KeyFormat.from_config(KeysConfig(prefix="bwp", pepper="p" * 16)),
]
_key_like = st.one_of(
    st.text(max_size=80),
    st.lists(
        st.one_of(
            st.sampled_from(["fw", "fi", "pk", "fi_pk", "_", "live", "test", "Live", "\n"]),
            st.text(alphabet=ALPHABET, min_size=1, max_size=40),
            st.text(max_size=3),
        ),
        max_size=8,
    ).map("".join),
)


@FAST
@given(st.sampled_from(_FORMATS), _key_like)
@example(_FORMATS[0], "fw_live_" + "A" * 38 + "\n")
@example(_FORMATS[0], "fw_live_" + "٣" * 38)  # Unicode digits are not base62
def test_parsing_any_string_gives_a_key_or_none(fmt: KeyFormat, secret: str) -> None:
    parsed = fmt.parse(secret)
    if parsed is None:
        return
    assert secret.isascii()
    assert secret.startswith(fmt.prefix + "_")
    assert len(fmt.hash(secret)) == 64


@FAST
@given(
    st.sampled_from(_FORMATS),
    st.sampled_from(["live", "test"]),
    st.integers(min_value=0),
    st.sampled_from([*ALPHABET, "_", "-", " ", "é", "\x00"]),
)
def test_a_generated_key_round_trips_and_any_one_character_change_is_refused(
    fmt: KeyFormat, environment: str, position: int, replacement: str
) -> None:
    secret = fmt.generate(environment)  # type: ignore[arg-type]
    parsed = fmt.parse(secret)
    assert parsed is not None
    expected_env = environment if fmt.environment_in_key else "live"
    assert parsed.environment == expected_env
    head = f"{fmt.prefix}_{environment}_" if fmt.environment_in_key else f"{fmt.prefix}_"
    random_part = secret[len(head) : -6]
    assert secret.startswith(head)
    assert len(random_part) == fmt.random_length
    assert parsed.display_prefix == head + random_part[:4]
    assert parsed.last4 == secret[-4:]
    assert fmt.hash(secret) == fmt.hash(secret)
    index = position % len(secret)
    changed = secret[:index] + replacement + secret[index + 1 :]
    if changed != secret:
        assert fmt.parse(changed) is None
    for other in _FORMATS:
        if (other.prefix, other.environment_in_key) != (fmt.prefix, fmt.environment_in_key):
            assert other.parse(secret) is None


# ---------------------------------------------------------------------------------------------
# Headers: what reaches the upstream.

_OWNED = [
    REQUEST_ID,
    FORWARDED_FOR,
    FORWARDED_PROTO,
    FORWARDED_HOST,
    *IDENTITY_HEADERS,
    "Forwarded",
    "X-Real-Ip",
    "Authorization",
    "Host",
    "Content-Length",
    "Expect",
]
_NAMES = [
    *_OWNED,
    *HOP_BY_HOP,
    *["Accept", "User-Agent", "X-Custom", "X-Tenant", "Cookie", "Idempotency-Key", "Origin"],
]


def _spellings(name: str) -> st.SearchStrategy[str]:
    """Every case, and '_' for '-', of one header name."""
    choices = [
        st.sampled_from(["-", "_"]) if c in "-_" else st.sampled_from([c.lower(), c.upper()])
        for c in name
    ]
    return st.tuples(*choices).map("".join)


_header_names = st.one_of(
    st.sampled_from(_NAMES).flatmap(_spellings),
    st.from_regex(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,12}", fullmatch=True),
)
_header_values = st.one_of(
    st.text(max_size=30),
    # As the HTTP parser hands over bytes that are not UTF-8: lone surrogates.
    st.binary(max_size=12).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.sampled_from(["close", "keep-alive, X-Custom", "x_tenant, ,Accept", "upgrade", "X-Org-Id"]),
    st.integers(1000, 9000).map(lambda n: "v" * n),
)
_header_lists = st.lists(st.tuples(_header_names, _header_values), max_size=14)


_RAW_BYTE = re.compile("[\udc80-\udcff]")  # a byte that is not UTF-8, as the parser keeps it


def _as_text(value: str) -> str:
    """What may be sent and logged: a byte that was not UTF-8 as its Latin-1 character."""
    return "".join(chr(ord(c) - 0xDC00) if "\udc80" <= c <= "\udcff" else c for c in value)


def _norm(name: str) -> str:
    """An independent spelling of 'the same header': ASCII case and '_'/'-' folded."""
    return name.translate(
        str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ_", "abcdefghijklmnopqrstuvwxyz-")
    )


@FAST
@given(_header_lists)
@example(
    [("X_Org_Id", "evil"), ("x-org-id", "evil"), ("Connection", "X-Custom"), ("X-Custom", "1")]
)
@example([("Transfer_Encoding", "chunked"), ("Content_Length", "5"), ("Keep_Alive", "1")])
@example([("X-Tenant", "a"), ("x-tenant", "b")])  # was sent upstream as x-tenant: b alone
@example([("X-Custom", "caf\udce9")])  # a byte that is not UTF-8: was dropped by the writer
def test_copied_headers_carry_nothing_owned_hop_by_hop_or_named_in_connection(
    headers: list[tuple[str, str]],
) -> None:
    dropped = wire_set(
        [REQUEST_ID, FORWARDED_FOR, FORWARDED_PROTO, FORWARDED_HOST, *IDENTITY_HEADERS]
    )
    connection = [v for n, v in headers if n.lower() == "connection"]
    named = {_norm(t.strip()) for v in connection for t in v.split(",") if t.strip()}
    copied = copy_end_to_end(_as_received(headers), dropped)
    banned = {_norm(n.decode()) for n in dropped} | {_norm(n) for n in HOP_BY_HOP} | named
    # Everything else in order, each name in the spelling of its first occurrence (a backend
    # might keep only one of X-A and x-a), values as text that can be sent.
    first: dict[str, str] = {}
    expected = [
        (first.setdefault(n.lower(), n), _as_text(v)) for n, v in headers if _norm(n) not in banned
    ]
    assert copied == [(n.encode(), v.encode()) for n, v in expected]
    # Header names are ASCII tokens; a non-ASCII token names no header.
    assert {t for t in connection_tokens(connection) if t.isascii()} == {
        t for t in named if t.isascii()
    }


def _as_received(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Headers as received: text as UTF-8, a byte that is not UTF-8 as itself."""
    return [(n.encode(), v.encode("utf-8", "surrogateescape")) for n, v in headers]


@settings(FAST, max_examples=150)
@given(
    _header_lists,
    st.lists(st.sampled_from(_NAMES).flatmap(_spellings), max_size=3),
    st.lists(st.tuples(st.sampled_from(_NAMES).flatmap(_spellings), st.just("ours")), max_size=3),
    st.lists(st.tuples(st.sampled_from(_NAMES).flatmap(_spellings), st.just("added")), max_size=2),
)
@example([("X-Tenant", "client")], [], [], [("x-tenant", "added")])  # was sent as one: "added"
@example([("X-A", "1"), ("x-a", "2")], [], [], [])
def test_header_rules_leave_one_pinned_value_in_every_spelling(
    headers: list[tuple[str, str]],
    remove: list[str],
    set_: list[tuple[str, str]],
    add: list[tuple[str, str]],
) -> None:
    # As the proxy does: copy, then rules.
    fields = apply_field_rules(
        copy_end_to_end(_as_received(headers), frozenset()), remove, set_, add
    )
    target = CIMultiDict([(n.decode(), v.decode()) for n, v in fields])
    pinned = {_norm(n) for n, _ in set_}
    added = {_norm(n) for n, _ in add}
    for name in remove:
        if _norm(name) not in pinned | added:
            assert not [n for n in target if _norm(n) == _norm(name)]
    for name in pinned - added:
        assert [v for n, v in target.items() if _norm(n) == name] == ["ours"]
    for name in added:
        assert "added" in [v for n, v in target.items() if _norm(n) == name]
    # One spelling per name (case aside): the HTTP client keeps only the last of X-A and x-a.
    spellings: dict[str, set[str]] = {}
    for name, _ in target.items():
        spellings.setdefault(name.lower(), set()).add(name)
    assert all(len(names) == 1 for names in spellings.values()), spellings


@FAST
@given(st.lists(st.tuples(st.sampled_from(["Authorization", "authorization"]), _header_values)))
@example([("Authorization", "Bearer  fw_live_x ")])
@example([("Authorization", "Bearer a"), ("authorization", "Bearer b")])
def test_a_bearer_token_is_one_plain_token_or_none(headers: list[tuple[str, str]]) -> None:
    token = bearer_token(CIMultiDict(headers))
    if token is None:
        return
    assert len(headers) == 1
    assert headers[0][1].lower().startswith("bearer ")
    assert token == token.strip()
    assert 0 < len(token) <= 256


_SAFE_ID = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")


@FAST
@given(st.lists(st.one_of(st.text(max_size=140), st.from_regex(r"[\w.:-]{1,130}", fullmatch=True))))
@example(["abc\n"])
@example(["a" * 129])
@example(["\u212a"])  # KELVIN SIGN: a letter to Unicode, not a plain ASCII K
def test_a_request_id_is_kept_only_when_single_short_and_plain(values: list[str]) -> None:
    chosen = accept_request_id(values)
    safe = len(values) == 1 and 0 < len(values[0]) <= 128 and set(values[0]) <= _SAFE_ID
    if safe:
        assert chosen == values[0]
    else:
        assert re.fullmatch(r"[0-9a-f]{28}", chosen)


# ---------------------------------------------------------------------------------------------
# X-Forwarded-*: believed only from trusted peers, never a crash on garbage.

_TRUST: dict[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {
    "none": [],
    "loopback": [ipaddress.ip_network("127.0.0.0/8")],
    "wide": [
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    ],
}


@pytest.fixture
async def resolver_port() -> AsyncIterator[int]:
    """A real server that answers with what each resolver makes of the request it got."""
    resolvers = {name: ForwardedResolver(nets) for name, nets in _TRUST.items()}

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        fwd = resolvers[request.rel_url.query["trust"]].resolve(request)
        return web.json_response(fwd._asdict())

    runner = web.ServerRunner(web.Server(handler, access_log=None), shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1]
    await runner.cleanup()


_hops = st.one_of(
    st.sampled_from(
        ["10.1.2.3", "203.0.113.9", "127.0.0.1", "::1", "fd00::5", "2001:db8::1", "unknown"]
    ),
    st.sampled_from(["::ffff:10.0.0.1", "10.0.0.1:8080", "[2001:db8::1]:443", "010.0.0.1"]),
    st.sampled_from(["fd00::1%eth0", "fe80::1%25x", "", " ", "1.2.3.4 5.6.7.8", "_hidden"]),
    st.ip_addresses().map(str),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20),
    # One character per byte on the wire: UTF-8 or not, NBSP and NEL included.
    st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
        max_size=8,
    ),
)
_xff_values = st.lists(st.lists(_hops, max_size=5).map(", ".join), max_size=3)


def _trusted(hop: str, nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(hop)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == n.version and ip in n for n in nets)


@settings(FAST, max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(sorted(_TRUST)),
    _xff_values,
    st.lists(st.sampled_from(["https", "HTTP", " https ", "ftp", "", "https, http"]), max_size=2),
    st.lists(st.sampled_from(["api.example.com", "", "evil", "a b"]), max_size=2),
    st.lists(st.sampled_from(_NAMES[:4]).flatmap(_spellings), max_size=3),
)
@example("loopback", ["\x80"], [], [], [])  # a byte that is not UTF-8: was lost upstream
@example("wide", ["10.1.2.3, 10.1.2.3"], [], [], [])
async def test_forwarded_values_come_only_from_trusted_peers_and_never_crash(
    resolver_port: int,
    trust: str,
    xff: list[str],
    protos: list[str],
    hosts: list[str],
    extra_names: list[str],
) -> None:
    lines = [f"GET /?trust={trust} HTTP/1.1", "Host: gw.example", "Connection: close"]
    lines += [f"X-Forwarded-For: {v}" for v in xff]
    lines += [f"X-Forwarded-Proto: {v}" for v in protos]
    lines += [f"X-Forwarded-Host: {v}" for v in hosts]
    lines += [f"{name}: 6.6.6.6" for name in extra_names]
    raw = await raw_request(resolver_port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), raw[:200]
    fwd = json.loads(body)  # unlike orjson, takes a lone surrogate, so the check below can
    for value in fwd.values():
        assert not _RAW_BYTE.search(value), fwd  # the HTTP writer would drop it, a log refuse it
    peer = "127.0.0.1"
    nets = _TRUST[trust]
    if not _trusted(peer, nets):
        assert fwd == {
            "client_ip": peer,
            "forwarded_for": peer,
            "proto": "http",
            "host": "gw.example",
        }
        return
    # The values as the server parsed them: names case-insensitive ('_' is not '-'), bytes
    # decoded as UTF-8 with surrogateescape.
    xff_all = xff + ["6.6.6.6" for n in extra_names if n.lower() == "x-forwarded-for"]
    parsed = [v.encode("latin-1").decode("utf-8", "surrogateescape") for v in xff_all]
    chain = [hop.strip() for value in parsed for hop in value.split(",") if hop.strip()]
    assert fwd["forwarded_for"] == _as_text(", ".join([*chain, peer]))
    assert fwd["proto"] in ("http", "https")
    inbound_hosts = hosts + ["6.6.6.6" for n in extra_names if n.lower() == "x-forwarded-host"]
    assert fwd["host"] == (inbound_hosts[:1] or [""])[0].strip() or "gw.example"
    # The client: walking from our peer outwards, the first hop that is not a trusted proxy
    # (or the farthest hop, when all are).
    if not chain:
        assert fwd["client_ip"] == peer
        return
    position = next((i for i in reversed(range(len(chain))) if not _trusted(chain[i], nets)), 0)
    assert fwd["client_ip"] == _as_text(chain[position])
    assert all(_trusted(hop, nets) for hop in chain[position + 1 :])


# ---------------------------------------------------------------------------------------------
# End to end: raw requests through a real gateway to the recording upstream.


def _weighted(*choices: tuple[int, st.SearchStrategy[str]]) -> st.SearchStrategy[str]:
    """One of the strategies, each drawn about as often as its weight says."""
    return st.sampled_from([s for weight, s in choices for _ in range(weight)]).flatmap(lambda s: s)


# Mostly requests that parse and route (so that headers reach the upstream), some that do not.
_METHODS = _weighted(
    (8, st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])),
    (1, st.sampled_from(["get", "TRACE", "CONNECT", "BREW", "M-SEARCH", "G\x00T", "PRI", ""])),
    (1, st.from_regex(r"[A-Z]{1,8}", fullmatch=True)),
)
_VERSIONS = st.sampled_from(["HTTP/1.1"] * 16 + ["HTTP/1.0", "HTTP/2.0", "HTTP/1.1x", "http/1.1"])
_good_paths = st.sampled_from(["/v1/items", "/v1/private/1", "/status", "/v1/x", "/v1/a%20b"])
_plain_tail = st.from_regex(r"(/[A-Za-z0-9._~:@!$&'()*+,=%-]{0,8}){0,3}", fullmatch=True)
_wire_paths = _weighted(
    (4, _good_paths),
    (4, st.tuples(_good_paths, _plain_tail).map("".join)),
    (1, _path_body.map(lambda s: "/v1/" + s)),
    (1, _targets),
)
_printable = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)
_control = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
# A character here is one byte on the wire: UTF-8 text, bytes that are not UTF-8, control bytes.
_wire_values = _weighted(
    (6, _printable),
    (2, st.text(max_size=10).map(lambda t: t.encode("utf-8", "surrogatepass").decode("latin-1"))),
    (2, st.binary(max_size=12).map(lambda b: _control.sub("", b.decode("latin-1")))),
    (1, st.binary(max_size=12).map(lambda b: b.decode("latin-1"))),
    (1, st.sampled_from(["close", "X-Custom, X-Tenant", "Bearer fw_live_x", "100-continue"])),
    (1, st.integers(1000, 9000).map(lambda n: "v" * n)),
).map(lambda v: v.replace("\r", "").replace("\n", ""))
# Framing headers are left out: a body that never comes would only make the test wait.
_wire_names = _header_names.filter(
    lambda n: _norm(n) not in ("content-length", "transfer-encoding")
)


@pytest.fixture
async def fuzz_target(
    gateway_factory: GatewayFactory,
    upstream_factory: UpstreamFactory,
) -> tuple[RunningGateway, Upstream]:
    upstream = await upstream_factory()
    gateway = await gateway_factory(
        make_config(
            {"app": {"targets": [upstream.url]}},
            [
                {"path": "/v1/private/{id}", "upstream": "app", "auth": "key"},
                {"path": "/v1/items", "upstream": "app", "methods": ["GET", "POST"]},
                {"path": "/status", "upstream": "app", "methods": ["GET"]},
                {"path": "/v1/{rest:.*}", "upstream": "app"},
            ],
        )
    )
    return gateway, upstream


# Headers the gateway sets upstream itself; a client's copy (any spelling) never arrives.
_SET_BY_US = {_norm(n) for n in (REQUEST_ID, FORWARDED_FOR, FORWARDED_PROTO, FORWARDED_HOST)}
_NEVER_FROM_CLIENT = _SET_BY_US | {_norm(n) for n in _OWNED} | {_norm(n) for n in HOP_BY_HOP}


def _without_repeated_singletons(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers but for a second User-Agent, Content-Type...: the test's upstream (aiohttp)
    refuses such a request with its own 400, as RFC 9110 lets a recipient, and this test
    tells the gateway's refusals from the upstream's answers by whether the upstream saw it."""
    seen: set[str] = set()
    kept = []
    for name, value in headers:
        lower = name.lower()
        if lower in SINGLETON_HEADERS:
            if lower in seen:
                continue
            seen.add(lower)
        kept.append((name, value))
    return kept


def _wire(method: str, target: str, version: str, headers: list[tuple[str, str]]) -> bytes:
    request_line = f"{method} {target} {version}\r\n".encode()
    fields = [f"{n}: {v}\r\n" for n, v in [*headers, ("Connection", "close")]]
    return request_line + "".join(fields).encode("latin-1") + b"\r\n"  # a character, a byte


@settings(
    FAST,
    max_examples=100,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    _METHODS,
    _wire_paths,
    _VERSIONS,
    st.sampled_from(["api.example.com", "x", "127.0.0.1:8080", "[::1]:80", "EXAMPLE.com.", None]),
    st.lists(st.tuples(_wire_names, _wire_values), max_size=8),
)
@example("GET", "/v1/x", "HTTP/1.1", "x", [("X-Custom", "caf\xc3\xa9 \xff")])  # Latin-1: bytes
@example("GET", "/v1/x", "HTTP/1.1", "x", [("X-Custom", "\xe9t\xe9")])
@example("GET", "/nope", "HTTP/1.1", "x", [("User-Agent", "caf\xe9")])  # was a 500: the log line
@example("CONNECT", "/v1/x", "HTTP/1.1", "x", [])  # was tunnelled: garbage after the answer
@example("GET", "/v1/x", "HTTP/1.1", "x", [("X-Tenant", "a"), ("x-tenant", "b")])  # lost "a"
@example("GET", "/v1/x", "HTTP/1.1", "x", [("User-Agent", "\xff")])
@example("GET", "/v1/items", "HTTP/1.1", "x", [("user-agent", ""), ("user-agent", "")])
async def test_raw_requests_are_proxied_clean_or_refused_with_the_envelope(
    fuzz_target: tuple[RunningGateway, Upstream],
    method: str,
    target: str,
    version: str,
    host: str | None,
    headers: list[tuple[str, str]],
) -> None:
    gateway, upstream = fuzz_target
    upstream.seen.clear()
    logs = LogLines()
    headers = _without_repeated_singletons(headers)
    if host is not None:
        headers = [("Host", host), *headers]
    raw = await raw_request(gateway.port, _wire(method, target, version, headers))
    assert re.match(rb"HTTP/\d\.\d \d{3} ", raw), raw[:500]
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1])
    response_headers = [tuple(line.split(": ", 1)) for line in header_lines]
    request_ids = [v for n, v in response_headers if n.lower() == "x-request-id"]
    assert len(request_ids) == 1, raw[:500]
    assert b"Traceback" not in raw
    assert status < 500, raw[:500]
    assert not re.search(rb"(^|\n)HTTP/\d", body), raw[:500]  # one answer, nothing after it
    flushed = logs.raw()
    assert b"Traceback" not in flushed
    assert not [e for e in logs.events() if e.get("level") in ("error", "critical")]
    if not upstream.seen:
        # Refused by the gateway: a 4xx with the one envelope and the request id.
        assert 400 <= status < 500, raw[:500]
        if method != "HEAD":
            error = orjson.loads(body)["error"]
            event(f"refused: {status} {error['code']}")
            assert set(error) == {"code", "message", "request_id"}
            assert error["request_id"] == request_ids[0]
        return
    [seen] = upstream.seen
    event("proxied")
    sent = [(n, v) for n, v in headers if n.lower() != "host"]
    connection = [v for n, v in headers if n.lower() == "connection"] + ["close"]
    named = {_norm(t.strip()) for v in connection for t in v.split(",") if t.strip()}
    # Header values as bytes on the wire (the server decodes them as UTF-8, surrogateescape).
    arrived = [(_norm(n), v.encode("utf-8", "surrogateescape")) for n, v in seen.headers]
    # Ours: exactly one each, with our values.
    assert [v.decode() for n, v in arrived if n == "x-request-id"] == request_ids
    assert [v for n, v in arrived if n == "x-forwarded-for"] == [b"127.0.0.1"]
    assert [v for n, v in arrived if n == "x-forwarded-proto"] == [b"http"]
    assert len([v for n, v in arrived if n == "x-forwarded-host"]) <= 1
    # Nothing owned, hop-by-hop or named in Connection from the client; the rest exactly as sent.
    ours = _SET_BY_US | {"host", "content-length"}  # the last two by the HTTP client, for us
    assert not {n for n, _ in arrived} & ((_NEVER_FROM_CLIENT | named) - ours)
    # Bytes that are not UTF-8 arrive as the Latin-1 characters they stand for, never dropped.
    expected = [
        (
            _norm(n),
            _as_text(v.encode("latin-1").strip(b" \t").decode("utf-8", "surrogateescape")).encode(),
        )
        for n, v in sent
        if _norm(n) not in _NEVER_FROM_CLIENT | named
    ]
    assert [(n, v) for n, v in arrived if n not in ours] == expected
