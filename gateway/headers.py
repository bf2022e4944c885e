"""Header names we own, and the hop-by-hop rules of a proxy (RFC 9110 section 7.6.1)."""

from __future__ import annotations

from collections.abc import Iterable

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
IDENTITY_HEADERS = (ORG_ID, ORG_SLUG, API_KEY_ID, SCOPES, KEY_ENVIRONMENT)

# What our own responses say in Server, instead of the HTTP library and its version.
SERVER_NAME = "gateway"

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


def normalize(name: str) -> str:
    """The form under which backends may merge header names: case- and '_'/'-'-insensitive."""
    return name.lower().replace("_", "-")


def strip_set(names: Iterable[str]) -> frozenset[str]:
    """Normalized names, for stripping every case, underscore and duplicate variant at once."""
    return frozenset(normalize(n) for n in names)


def connection_tokens(values: Iterable[str]) -> set[str]:
    """Header names listed in Connection, which are hop-by-hop for this message only."""
    tokens: set[str] = set()
    for value in values:
        for token in value.split(","):
            token = token.strip()
            if token:
                tokens.add(normalize(token))
    return tokens
