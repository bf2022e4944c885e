"""errors: how the gateway's own error answers look to clients of an API that already has docs.

Each of our codes may be answered with another status, code name and message, e.g.
``insufficient_scope: {status: 401, code: unauthorized}``. A mapping may rename an answer but not
change what it means: a client error stays a 4xx, a server error a 5xx, and statuses whose
meaning comes with a protocol (405 and its Allow, 429 and its Retry-After, ...) stay with the
errors that carry it.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from gateway.config.section import Section

# Every code the data plane answers with, and its status. The error classes (gateway.errors and
# the plugins) are the source; a test holds this table to them.
ERROR_CODES: dict[str, int] = {
    "bad_request": 400,
    "idempotency_key_required": 400,
    "unauthorized": 401,
    "insufficient_scope": 403,
    # A key with no scopes at all on a route that needs some; answered as insufficient_scope
    # (or as it is mapped) unless mapped itself.
    "no_scopes": 403,
    "ip_not_allowed": 403,
    "api_access_disabled": 403,
    "cors_not_allowed": 403,
    "plan_limit_reached": 403,
    "key_not_grantable": 403,
    "route_not_found": 404,
    "not_found": 404,
    "method_not_allowed": 405,
    "request_timeout": 408,
    "conflict": 409,
    "idempotency_in_flight": 409,
    "idempotency_response_not_stored": 409,
    "idempotency_outcome_unknown": 409,
    "sunset": 410,
    "payload_too_large": 413,
    "expectation_failed": 417,
    "idempotency_key_reused": 422,
    "rate_limited": 429,
    "internal_error": 500,
    "bad_gateway": 502,
    "unavailable": 503,
    "gateway_timeout": 504,
}

# Statuses that promise something beyond "client error" or "server error": a header (Allow,
# Retry-After, Proxy-Authenticate, Upgrade), a closed connection, a limit the client can act on,
# or a meaning of their own (501 an unknown method, 505 a version, 511 a captive portal). Only the
# error that keeps that promise may be answered with one.
PROTOCOL_STATUSES = frozenset(
    {405, 407, 408, 411, 413, 414, 416, 417, 421, 426, 429, 431, 501, 505, 511}
)

_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,63}")
_MESSAGE_MAX = 500


class ErrorAnswer(Section):
    status: int | None = Field(
        None, description="Status to answer with (same class as ours: 4xx or 5xx); null: ours."
    )
    code: str | None = Field(None, description="Code name in the error body; null: ours.")
    message: str | None = Field(
        None, description=f"Message in the error body (at most {_MESSAGE_MAX} characters)."
    )

    @field_validator("code")
    @classmethod
    def _code(cls, value: str | None) -> str | None:
        if value is not None and not _CODE.fullmatch(value):
            raise ValueError(
                "must be 1-64 letters, digits or _.:- starting with a letter"
                f" (like no-scope or unauthorized), got {value!r}"
            )
        return value

    @field_validator("message")
    @classmethod
    def _message(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value or len(value) > _MESSAGE_MAX or not value.isprintable():
            raise ValueError(f"must be 1-{_MESSAGE_MAX} printable characters")
        return value


def check_error_map(value: dict[str, ErrorAnswer]) -> dict[str, ErrorAnswer]:
    """Known codes only, and no mapping that changes what an answer means."""
    for ours, answer in value.items():
        if ours not in ERROR_CODES:
            raise ValueError(f"unknown error code {ours!r} (known: {', '.join(ERROR_CODES)})")
        own = ERROR_CODES[ours]
        status = answer.status
        if status is None or status == own:
            continue
        if status // 100 != own // 100:
            kind = "client error (4xx)" if own < 500 else "server error (5xx)"
            raise ValueError(
                f"{ours}.status: {status} would change what the answer means; {ours} is a"
                f" {kind}, so map it to another {own // 100}xx status"
            )
        if status in PROTOCOL_STATUSES or own in PROTOCOL_STATUSES:
            raise ValueError(
                f"{ours}.status: {own} and {status} carry protocol meaning (headers such as"
                " Allow or Retry-After, a closed connection); only the error that keeps it"
                " may answer with it"
            )
    return value
