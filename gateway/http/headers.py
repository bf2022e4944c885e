"""Header names we own, and the hop-by-hop rules of a proxy (RFC 9110 section 7.6.1)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from multidict import CIMultiDict, MultiMapping, MutableMultiMapping

REQUEST_ID = "X-Request-Id"
FORWARDED_FOR = "X-Forwarded-For"
FORWARDED_PROTO = "X-Forwarded-Proto"
FORWARDED_HOST = "X-Forwarded-Host"
# Identity headers the gateway sends upstream after authenticating a key. SECURITY: whatever a
# client sends under these names (any case, '_' for '-', repeated) is dropped on every route.
ORG_ID = "X-Org-Id"
ORG_SLUG = "X-Org-Slug"
API_KEY_ID = "X-Api-Key-Id"
SCOPES = "X-Scopes"
KEY_ENVIRONMENT = "X-Key-Environment"
SUBJECT = "X-Subject"  # an access token's sub
CLIENT_ID = "X-Client-Id"  # an access token's client_id
IDENTITY_HEADERS = (ORG_ID, ORG_SLUG, API_KEY_ID, SCOPES, KEY_ENVIRONMENT, SUBJECT, CLIENT_ID)
# The rate-limit fields: on a route the gateway limits, the backend's own are replaced by ours.
RATE_LIMIT_HEADERS = (
    "RateLimit-Policy",
    "RateLimit",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
)

# What our own responses say in Server, instead of the HTTP library and its version.
SERVER = "Server"
SERVER_NAME = "gateway"

# A header as it is on the wire: name and value.
Field = tuple[bytes, bytes]

# Headers that describe one connection, never forwarded in either direction.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


_HOP_BY_HOP_WIRE = frozenset(name.encode("ascii") for name in HOP_BY_HOP)
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b"upgrade"})


def normalize(name: str) -> str:
    """The form under which backends may merge header names: case- and '_'/'-'-insensitive."""
    return name.lower().replace("_", "-")


def strip_set(names: Iterable[str]) -> frozenset[str]:
    """Normalized names, for stripping every case, underscore and duplicate variant at once."""
    return frozenset(normalize(n) for n in names)


# What the gateway tells the upstream about where a request came from: whatever a client sends
# under these names is dropped, and Forwarded and X-Real-IP too (a backend might believe them
# instead of our X-Forwarded-For).
FORWARDING_HEADERS = (
    REQUEST_ID,
    FORWARDED_FOR,
    FORWARDED_PROTO,
    FORWARDED_HOST,
    "Forwarded",
    "X-Real-Ip",
)
# SECURITY: every header the gateway sets or strips between client and upstream, normalized.
# Config may not name one (a route's header rules, an attribute's header): that would re-open
# spoofing, or be dropped with ours.
GATEWAY_OWNED = strip_set(
    [
        *FORWARDING_HEADERS,
        *IDENTITY_HEADERS,
        *RATE_LIMIT_HEADERS,
        *HOP_BY_HOP,
        "Host",
        "Content-Length",
        "Expect",
        "Idempotent-Replayed",
    ]
)


def copy_end_to_end(source: Iterable[Field], dropped: frozenset[bytes]) -> list[Field]:
    """Headers from one hop for the next, without hop-by-hop headers, the ones named in
    Connection, and the ones in ``dropped`` (see ``wire_set``).

    Repeats of a name keep the spelling of its first occurrence: given ``X-A`` and ``x-a``, a
    backend that keeps only one of two spellings would see half. Values are as received, but
    for a byte that is not UTF-8, which becomes the character it stands for (``wire_text``).
    """
    copied: list[tuple[bytes, Field]] = []
    spelling: dict[bytes, bytes] = {}
    named: set[bytes] = set()
    for name, value in source:
        lower = name.lower()
        key = lower.replace(b"_", b"-")  # wire_set's form, inlined: this runs for every header
        if key in _HOP_BY_HOP_WIRE:
            # The usual values name no other header: no need to look.
            if key == b"connection" and value.lower() not in _PLAIN_CONNECTION:
                named |= _wire_tokens(value)
            continue
        if key not in dropped:
            copied.append(
                (
                    key,
                    (
                        spelling.setdefault(lower, name),
                        value if value.isascii() else wire_text(value),
                    ),
                )
            )
    if named:
        return [field for key, field in copied if key not in named]
    return [field for _, field in copied]


def wire_set(names: Iterable[str]) -> frozenset[bytes]:
    """``strip_set`` for headers as received: the names to drop in every spelling, as bytes."""
    return frozenset(n.encode("ascii") for n in strip_set(names))


def wire_text(value: bytes) -> bytes:
    """A received value as it is sent on: UTF-8 as it is, any other byte as the character it
    stands for in HTTP (see ``field_text``), in UTF-8."""
    if value.isascii():
        return value
    return field_text(value.decode("utf-8", "surrogateescape")).encode("utf-8")


def _wire_tokens(value: bytes) -> set[bytes]:
    # The parser's own decoding and back: a byte that names no header stays what it was.
    tokens = connection_tokens([value.decode("utf-8", "surrogateescape")])
    return {token.encode("utf-8", "surrogateescape") for token in tokens}


def apply_field_rules(
    fields: list[Field],
    remove: Iterable[str],
    set_: Iterable[tuple[str, str]],
    add: Iterable[tuple[str, str]],
) -> list[Field]:
    """``apply_rules`` on headers as they are sent (copied ones are UTF-8: ``wire_text``)."""
    target: CIMultiDict[str] = CIMultiDict(
        [(name.decode("utf-8"), value.decode("utf-8")) for name, value in fields]
    )
    apply_rules(target, remove, set_, add)
    return encode_fields(target.items())


def encode_fields(items: Iterable[tuple[str, str]]) -> list[Field]:
    """Header text as sent: UTF-8, a byte the parser could not decode as that byte again."""
    return [
        (name.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape"))
        for name, value in items
    ]


# How the HTTP parser keeps a byte that is not UTF-8: a lone surrogate (surrogateescape).
_RAW_BYTE = re.compile("[\udc80-\udcff]")


def field_text(value: str) -> str:
    """A received field value as text that can be sent on and logged.

    A byte that is not UTF-8 (obs-text, RFC 9110 section 5.5) reaches us as a lone surrogate,
    which the HTTP writer drops without a word (``a\\xffb`` would arrive as ``ab``) and which
    no JSON log line can hold. Each such byte becomes the ISO-8859-1 character it has always
    stood for in HTTP, so nothing is cut out; UTF-8 text is returned unchanged.
    """
    if value.isascii():
        return value
    return _RAW_BYTE.sub(_latin1, value)


def _latin1(m: re.Match[str]) -> str:
    return chr(ord(m.group()) - 0xDC00)


def stamp(
    target: MutableMultiMapping[str], request_id: str, extra: Iterable[tuple[str, str]]
) -> None:
    """What the gateway puts on every response it sends: the request id, a Server that names no
    library version, and the headers plugins asked for (rate limits, deprecation, ...)."""
    target[REQUEST_ID] = request_id
    if SERVER not in target:
        target[SERVER] = SERVER_NAME
    for name, value in extra:
        target.add(name, value)


def is_preflight(method: str, headers: MultiMapping[str]) -> bool:
    """A CORS preflight: the browser asks whether it may send another method (named in the
    Access-Control-Request-Method header), which the request is then routed by."""
    return (
        method == "OPTIONS" and "Origin" in headers and "Access-Control-Request-Method" in headers
    )


def bearer_token(headers: MultiMapping[str], *, max_length: int = 256) -> str | None:
    """The token of exactly one ``Authorization: Bearer <token>`` header, else None.

    SECURITY: a second Authorization header makes the request ambiguous, so it has no token.
    Keys are read from this header only, never from the query string, where they would end
    up in logs and browser histories.
    """
    values = headers.getall("Authorization", ())
    if len(values) != 1:
        return None
    scheme, _, token = values[0].partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > max_length:
        return None
    return token


def apply_rules(
    target: MutableMultiMapping[str],
    remove: Iterable[str],
    set_: Iterable[tuple[str, str]],
    add: Iterable[tuple[str, str]],
) -> None:
    """A route's header rules: remove (every variant), then set, then add."""
    for name in remove:
        key = normalize(name)
        for present in [n for n in target if normalize(n) == key]:
            target.popall(present, None)
    for name, value in set_:
        # SECURITY: every spelling goes first (X_Tenant as well as x-tenant), so a backend
        # that merges '_' and '-' never sees a client's copy next to the pinned value.
        key = normalize(name)
        for present in [n for n in target if normalize(n) == key]:
            target.popall(present, None)
        target[name] = value
    for name, value in add:
        # In the spelling already there: given X-A and x-a, the HTTP client sends only x-a.
        lower = name.lower()
        target.add(next((n for n in target if n.lower() == lower), name), value)


def connection_tokens(values: Iterable[str]) -> set[str]:
    """Header names listed in Connection, which are hop-by-hop for this message only."""
    tokens: set[str] = set()
    for value in values:
        for token in value.split(","):
            token = token.strip()
            if token:
                tokens.add(normalize(token))
    return tokens
