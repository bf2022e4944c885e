"""The plugin interface and the per-route chain, composed once per config snapshot."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol

from aiohttp import web

if TYPE_CHECKING:
    from gateway.dataplane.snapshot import CompiledRoute
    from gateway.http.forwarded import Forwarded
    from gateway.http.request import Request
    from gateway.keys.keyring import Identity
    from gateway.ratelimit.policy import Decision


@dataclass(slots=True)
class RequestContext:
    """What one request carries through the chain; plugins read and add to it."""

    request: Request
    request_id: str
    method: str
    path: str  # raw, exactly as matched and as forwarded
    query: str  # raw, without the '?'
    forwarded: Forwarded  # client address and the X-Forwarded-* to send
    started: float  # time.perf_counter() at arrival
    route: CompiledRoute | None = None
    preflight: bool = False  # a CORS preflight, routed by the method it asks about
    identity: Identity | None = None  # set by the auth plugin
    rate_limit: Decision | None = None  # set by the rate_limit plugin
    params: dict[str, str] = field(default_factory=dict)
    # Headers a plugin wants on the upstream request; names here are also stripped from the
    # client's request in every case and '_' variant, so a client can never supply them.
    upstream_headers: dict[str, str] = field(default_factory=dict)
    # Headers a plugin wants on the response, the gateway's own error responses included.
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    # Extra access-log fields (e.g. "rate_limited": True).
    log_fields: dict[str, object] = field(default_factory=dict)
    upstream_target: str | None = None
    # False until the upstream may have seen the request (a connect failure leaves it False).
    upstream_reached: bool = False
    body: bytes | None = None  # the request body, when a plugin had to read it whole
    capture: ResponseCapture | None = None  # set to keep a copy of the upstream's answer
    upstream_seconds: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0

    @property
    def client_ip(self) -> str:
        return self.forwarded.client_ip


@dataclass(slots=True)
class ResponseCapture:
    """A copy of the upstream's answer, up to ``limit`` bytes of body, taken as it streams."""

    limit: int
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    overflow: bool = False  # the body was larger than limit: it was not kept
    complete: bool = False  # the whole answer arrived from the upstream
    # Awaited once the whole answer is captured, before the client gets its last byte: a
    # client that retries the moment it has the answer must find it stored.
    on_complete: Callable[[], Awaitable[None]] | None = None

    async def finish(self) -> None:
        self.complete = True
        if self.on_complete is not None:
            await self.on_complete()

    def head(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.status = status
        self.headers = headers

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.overflow:
            return
        if self.size > self.limit:
            self.overflow = True
            self.chunks.clear()
        else:
            self.chunks.append(chunk)


Handler = Callable[[RequestContext], Awaitable[web.StreamResponse]]


class Plugin(Protocol):
    """A request plugin, one per route that needs it: its class is registered by name (see
    gateway.config.registry and gateway.dataplane.plugins); the config keys it owns are
    declared by its class, usually named after it.

    Higher priority runs first (outermost). ``startup`` and ``shutdown`` bracket the snapshot
    that uses the plugin; ``__call__`` must call ``call_next`` to continue, or answer itself.
    """

    name: ClassVar[str]
    priority: ClassVar[int]
    # Headers the plugin may set on the upstream request: every variant a client sends under
    # these names is stripped on the plugin's routes, so the backend only ever sees ours.
    upstream_headers: ClassVar[tuple[str, ...]]

    async def startup(self) -> None: ...

    async def shutdown(self) -> None: ...

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> web.StreamResponse: ...


def build_chain(plugins: Sequence[Plugin], terminal: Handler) -> Handler:
    """Compose plugins around the terminal handler, highest priority outermost."""
    handler = terminal
    for plugin in sorted(plugins, key=lambda p: p.priority):
        handler = _link(plugin, handler)
    return handler


def _link(plugin: Plugin, call_next: Handler) -> Handler:
    # A function that returns the plugin's own coroutine, not a coroutine that awaits it: one
    # coroutine frame fewer per plugin on every request.
    def step(ctx: RequestContext) -> Awaitable[web.StreamResponse]:
        return plugin(ctx, call_next)

    return step
