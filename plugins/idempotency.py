"""idempotency: Idempotency-Key on POST, PATCH and DELETE; one side effect, replayed answers.

draft-ietf-httpapi-idempotency-key-header with Stripe's semantics: the first request takes a
lock; duplicates in flight get 409; the same key with another request gets 422; the finished
answer is replayed, with ``Idempotent-Replayed: true``, for ``idempotency.ttl``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

import orjson
import structlog
from aiohttp import web
from pydantic import Field, model_validator

from gateway.config import GatewayConfig, GatewaySettings, RouteConfig, Section
from gateway.config.registry import register, sections
from gateway.config.types import MIB, WEEK, DurationRange, SizeRange, Timeout
from gateway.dataplane.chain import Handler, RequestContext, ResponseCapture
from gateway.dataplane.plugins import PluginServices
from gateway.dataplane.request_body import read_body
from gateway.errors import BadRequest, GatewayError, Unavailable
from gateway.http.headers import (
    IDENTITY_HEADERS,
    RATE_LIMIT_HEADERS,
    REQUEST_ID,
    normalize,
    stamp,
    strip_set,
)
from gateway.observability.metrics import Metrics
from gateway.store import Store, StoreError

log = structlog.get_logger("gateway.idempotency")

IDEMPOTENCY_KEY = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
_METHODS = frozenset({"POST", "PATCH", "DELETE"})
_PRINTABLE = re.compile(r"[\x20-\x7e]{1,255}\Z")
# What a replay may carry from the original answer: describes the resource, never a session
# (Set-Cookie), a connection (hop-by-hop) or this gateway's own per-request headers.
_REPLAYED_HEADERS = frozenset(
    {
        "content-type",
        "content-encoding",
        "content-language",
        "content-disposition",
        "location",
        "etag",
        "last-modified",
        "link",
        "cache-control",
        "expires",
        "vary",
    }
)
_OURS = (REQUEST_ID, *IDENTITY_HEADERS, *RATE_LIMIT_HEADERS)


class IdempotencyConfig(Section):
    ttl: Annotated[float, DurationRange(most=WEEK, positive=True)] = Field(
        86400.0, description="How long a response is replayed to retries; at most 7d."
    )
    lock_timeout: Timeout = Field(
        60.0,
        description="How long a request in flight holds its key (a crashed holder's ends);"
        " at most 1d.",
    )
    max_response_body: Annotated[int, SizeRange(most=64 * MIB)] = Field(
        1024 * 1024,
        description="Largest response kept for replay; retries of a larger one get a 409."
        " At most 64MiB (each is kept in the store).",
    )


class IdempotencySettings(GatewaySettings):
    idempotency: IdempotencyConfig = Field(default_factory=IdempotencyConfig)


class IdempotencyRoute(RouteConfig):
    idempotency: Literal["off", "optional", "required"] = Field(
        "off", description="Idempotency-Key on POST, PATCH and DELETE: off, optional or required."
    )
    idempotency_keep_5xx: bool = Field(
        True, description="Replay an upstream 5xx to retries too (false: let them try again)."
    )

    @model_validator(mode="after")
    def _idempotency_needs_auth(self) -> IdempotencyRoute:
        if self.idempotency != "off" and self.auth == "none":
            raise ValueError("idempotency: records are kept per org; it needs auth")
        return self


class IdempotencyKeyRequired(GatewayError):
    status, code = 400, "idempotency_key_required"
    message = "This endpoint requires an Idempotency-Key header."


class IdempotencyInFlight(GatewayError):
    status, code = 409, "idempotency_in_flight"
    message = "A request with this Idempotency-Key is still being processed; retry shortly."

    def __init__(self) -> None:
        super().__init__(headers=[("Retry-After", "1")])


class IdempotencyKeyReused(GatewayError):
    status, code = 422, "idempotency_key_reused"
    message = "This Idempotency-Key was used with a different request (method, path or body)."


class IdempotencyResponseNotStored(GatewayError):
    status, code = 409, "idempotency_response_not_stored"

    def __init__(self, status: int) -> None:
        super().__init__(
            f"The request with this Idempotency-Key completed with status {status}; its"
            " response was too large to keep for replay, and it was not run again."
        )


class IdempotencyOutcomeUnknown(GatewayError):
    status, code = 409, "idempotency_outcome_unknown"
    message = (
        "The request with this Idempotency-Key reached the upstream, but its answer was lost;"
        " it was not run again. Check the resource's state before using a new key."
    )


def _record(capture: ResponseCapture, ours: frozenset[str], *, incomplete: bool = False) -> bytes:
    head = {
        "status": capture.status,
        "headers": [[k, v] for k, v in capture.headers if _keep_header(k, ours)],
        "too_large": capture.overflow,
        "incomplete": incomplete,
    }
    body = b"" if incomplete or capture.overflow else b"".join(capture.chunks)
    return orjson.dumps(head) + b"\n" + body


def _outcome(capture: ResponseCapture) -> str:
    return "not_stored" if capture.overflow else "stored"


def parse_key(values: list[str]) -> str:
    """The key: 1 to 255 printable ASCII characters, bare or as the draft's quoted string."""
    if len(values) != 1:
        raise BadRequest("Send exactly one Idempotency-Key header.")
    key = values[0].strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not _PRINTABLE.match(key):
        raise BadRequest("The Idempotency-Key must be 1 to 255 printable ASCII characters.")
    return key


def _keep_header(name: str, ours: frozenset[str]) -> bool:
    lower = name.lower()
    if lower in _REPLAYED_HEADERS:
        return True
    return lower.startswith("x-") and normalize(lower) not in ours


@register
class IdempotencyPlugin:
    """Runs a write once per (org, Idempotency-Key); later copies get the first answer."""

    name: ClassVar[str] = "idempotency"
    priority: ClassVar[int] = 800  # after auth (the org scopes records) and rate limits
    upstream_headers: ClassVar[tuple[str, ...]] = ()
    route_fields: ClassVar[type[RouteConfig] | None] = IdempotencyRoute
    config_fields: ClassVar[type[GatewaySettings] | None] = IdempotencySettings

    @classmethod
    def build(
        cls, route: RouteConfig, config: GatewayConfig, services: PluginServices
    ) -> IdempotencyPlugin | None:
        if not isinstance(route, IdempotencyRoute) or route.idempotency == "off":
            return None
        settings = sections(config, IdempotencySettings)
        return cls(
            services.store,
            route,
            settings.idempotency if settings is not None else IdempotencyConfig(),
            services.metrics,
            body_timeout=config.server.body_timeout,
            clock=services.clock,
            attribute_headers=tuple(config.identity.attribute_headers.values()),
        )

    def __init__(
        self,
        store: Store,
        route: IdempotencyRoute,
        settings: IdempotencyConfig,
        metrics: Metrics,
        *,
        body_timeout: float,
        clock: Callable[[], float] = time.time,
        attribute_headers: tuple[str, ...] = (),
    ) -> None:
        self.store = store
        # Headers that describe one request's caller, never replayed to another's.
        self._ours = strip_set([*_OURS, *attribute_headers])
        self.required = route.idempotency == "required"
        self.route_label = route.label
        self.keep_5xx = route.idempotency_keep_5xx
        self.max_body = route.max_body_size
        self.settings = settings
        self.body_timeout = body_timeout
        self.clock = clock
        self._outcomes = {
            outcome: metrics.idempotency.labels(outcome)
            for outcome in ("stored", "replayed", "conflict", "mismatch", "released", "not_stored")
        }

    async def startup(self) -> None:
        """The store is shared and owned by the process."""

    async def shutdown(self) -> None:
        """Nothing of its own to release."""

    def _count(self, ctx: RequestContext, outcome: str) -> None:
        self._outcomes[outcome].inc()
        ctx.log_fields["idempotency"] = outcome

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> web.StreamResponse:
        if ctx.method not in _METHODS:
            return await call_next(ctx)
        values = ctx.request.headers.getall(IDEMPOTENCY_KEY, [])
        if not values:
            if self.required:
                raise IdempotencyKeyRequired()
            return await call_next(ctx)
        key = parse_key(list(values))
        identity = ctx.identity
        if identity is None:  # config validation requires auth: key on these routes
            return await call_next(ctx)
        # The body is read whole: a reused key with another body must be refused before the
        # upstream sees anything. The route's max_body_size bounds it.
        body = await read_body(ctx, self.max_body, self.body_timeout)
        ctx.body = body
        # Who asks is part of the request: the backend is told the caller's scopes and
        # attributes (a role), so a key of the org with others must not get this one's answer.
        # A rotated key keeps both, and still replays. A token's backend is told its subject and
        # client too: one user's answer is never replayed to another of the same org.
        told: list[Any] = [sorted(identity.scopes), sorted(identity.attributes.items())]
        if identity.token is not None:
            told += [identity.token.subject, identity.token.client_id]
        caller = orjson.dumps(told)
        fingerprint = hashlib.sha256(
            b"\n".join(
                [
                    ctx.method.encode(),
                    ctx.path.encode(),
                    ctx.query.encode(),
                    hashlib.sha256(body).hexdigest().encode(),
                    hashlib.sha256(caller).hexdigest().encode(),
                ]
            )
        ).hexdigest()
        # Scoped to the org, not the key: a retry made after a key rotation still replays. Test
        # and live keys, and routes (which may lead to different backends), never share one.
        tag = f"{identity.environment}\n{self.route_label}\n{key}"
        scope = f"{identity.org.id}:{hashlib.sha256(tag.encode()).hexdigest()}"
        token = os.urandom(16).hex()
        try:
            begin = await self.store.idempotency_begin(
                scope, fingerprint, token, self.clock(), self.settings.lock_timeout
            )
        except StoreError:
            raise Unavailable(
                "Idempotency records are unavailable; try again shortly.",
                headers=[("Retry-After", "1")],
            ) from None
        if begin.outcome == "mismatch":
            self._count(ctx, "mismatch")
            raise IdempotencyKeyReused()
        if begin.outcome == "in_flight":
            self._count(ctx, "conflict")
            raise IdempotencyInFlight()
        if begin.outcome == "replay" and begin.response is not None:
            self._count(ctx, "replayed")
            return self._replay(ctx, begin.response)
        return await self._first(ctx, scope, token, call_next)

    async def _first(
        self, ctx: RequestContext, scope: str, token: str, call_next: Handler
    ) -> web.StreamResponse:
        """The request holds the lock: run it, then settle the record for the retries."""
        capture = ctx.capture = ResponseCapture(self.settings.max_response_body)
        settled = False

        async def settle() -> None:
            nonlocal settled
            if not settled:
                settled = True
                await self._settle(ctx, scope, token, capture)

        # The proxy calls this before the client has the last byte (see ResponseCapture): a
        # client that retries the moment it has the answer must find it stored.
        capture.on_complete = settle
        renewer = asyncio.create_task(self._renew(scope, token), name="idempotency-lock")
        try:
            response = await call_next(ctx)
        except BaseException:
            await settle()
            raise
        finally:
            renewer.cancel()
        await settle()
        return response

    async def _settle(
        self, ctx: RequestContext, scope: str, token: str, capture: ResponseCapture
    ) -> None:
        if capture.complete:
            if capture.status >= 500 and not self.keep_5xx:
                await self._finish(ctx, scope, token, None, "released")
            else:
                await self._finish(
                    ctx, scope, token, _record(capture, self._ours), _outcome(capture)
                )
        elif not ctx.upstream_reached:
            # The request never left (a connect failure): nothing happened, the retry runs.
            await self._finish(ctx, scope, token, None, "released")
        else:
            # The upstream may have acted, but its answer is not whole in hand (cut off, timed
            # out, the client gone mid-stream): a retry must not run the write a second time.
            await self._finish(
                ctx, scope, token, _record(capture, self._ours, incomplete=True), "not_stored"
            )

    async def _renew(self, scope: str, token: str) -> None:
        """Keep the lock while the request is in flight. A gateway that crashes stops renewing,
        so its lock runs out within lock_timeout; a slow upstream never loses it."""
        lock = self.settings.lock_timeout
        while True:
            await asyncio.sleep(lock / 3)
            try:
                if not await self.store.idempotency_renew(scope, token, self.clock(), lock):
                    log.warning("idempotency_lock_lost", reason="taken over or expired")
                    return
            except StoreError as exc:
                log.warning("idempotency_lock_not_renewed", error=str(exc))

    async def _finish(
        self, ctx: RequestContext, scope: str, token: str, record: bytes | None, outcome: str
    ) -> None:
        for delay in (0.05, 0.25, 1.0, None):
            try:
                kept = await self.store.idempotency_finish(
                    scope, token, record, self.clock(), self.settings.ttl
                )
            except StoreError as exc:
                if delay is None:
                    # The answer is on its way; the lock runs out by itself, and a retry after
                    # that may run again. Said loudly, because it breaks the promise.
                    log.error("idempotency_not_saved", error=str(exc), outcome=outcome)
                    return
                await asyncio.sleep(delay)
                continue
            if not kept:
                log.error("idempotency_lock_lost", outcome=outcome)
                return
            self._count(ctx, outcome)
            return

    def _replay(self, ctx: RequestContext, record: bytes) -> web.StreamResponse:
        head_raw, _, body = record.partition(b"\n")
        head = orjson.loads(head_raw)
        if head.get("incomplete"):
            raise IdempotencyOutcomeUnknown()
        if head.get("too_large"):
            raise IdempotencyResponseNotStored(int(head["status"]))
        response = web.Response(status=int(head["status"]), body=body)
        headers = response.headers
        for name, value in head["headers"]:
            headers.add(name, value)
        headers[REPLAYED] = "true"
        stamp(headers, ctx.request_id, ctx.response_headers)
        ctx.bytes_out = len(body)
        return response
