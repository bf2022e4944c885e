"""An upstream: its healthy targets in round robin, a connection pool per target, its limits."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence

import aiohttp
import structlog
from yarl import URL

from gateway.config import HealthConfig, UpstreamTlsConfig
from gateway.dataplane.health import RetryBudget, TargetSelector
from gateway.dataplane.upstream_http import TargetPool
from gateway.errors import Unavailable
from gateway.observability.metrics import UpstreamMetrics
from gateway.tasks import cancel_and_wait

log = structlog.get_logger("gateway.upstream")


class Target:
    """One target as the proxy sends to it: its pool, its base path, the Host it is named by."""

    __slots__ = ("base", "host", "pool")

    def __init__(
        self,
        target: str,
        max_connections: int,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        url = URL(target)
        host = url.raw_host or ""
        port = url.port or (443 if url.scheme == "https" else 80)
        self.base = url.raw_path.rstrip("/")
        name = f"[{host}]" if ":" in host else host
        # As the HTTP client named it before: the port only when it is not the default one.
        authority = name if url.is_default_port() else f"{name}:{port}"
        self.host = authority.encode("ascii" if authority.isascii() else "idna")
        self.pool = TargetPool(
            host,
            port,
            max_connections=max_connections,
            # The HTTP client's keep-alive time before: many upstreams close idle connections
            # soon after, and the one we would pick is then the likeliest to be dead.
            idle_timeout=15.0,
            ssl=tls if url.scheme == "https" else None,
            server_name=server_name,
        )

    def address(
        self, path: str, query: str, headers: list[tuple[bytes, bytes]]
    ) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """The request target on this upstream, and ``headers`` with a Host naming it unless
        they carry one already (a route's header rules may set it)."""
        target = f"{self.base}{path}?{query}" if query else f"{self.base}{path}"
        if not any(len(name) == 4 and name.lower() == b"host" for name, _ in headers):
            headers = [(b"Host", self.host), *headers]
        return target.encode("utf-8", "surrogateescape"), headers


class UpstreamPool:
    """One upstream: its targets in round robin, a connection pool per target, its limits.

    The proxy path sends through the per-target pools; active health checks keep an HTTP
    client session of their own.
    """

    def __init__(
        self,
        name: str,
        targets: Sequence[str],
        *,
        max_connections: int,
        preserve_host: bool,
        metrics: UpstreamMetrics,
        health: HealthConfig | None = None,
        max_concurrency: int | None = None,
        retry_budget: float = 0.2,
        tls: UpstreamTlsConfig | None = None,
    ) -> None:
        self.name = name
        self.targets = tuple(t.rstrip("/") for t in targets)
        self.preserve_host = preserve_host
        self.metrics = metrics
        self.health = health or HealthConfig()
        self.selector = TargetSelector(
            len(self.targets),
            failures=self.health.failures,
            cooldown=self.health.cooldown,
            max_cooldown=self.health.max_cooldown,
        )
        self.budget = RetryBudget(retry_budget)
        self.max_concurrency = max_concurrency
        self.inflight = 0
        self._max_connections = max_connections
        self._tls = tls
        self._server_name = tls.server_name if tls is not None else None
        self._session: aiohttp.ClientSession | None = None
        self.upstreams: tuple[Target, ...] = ()
        self._checker: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        self.metrics.healthy.set(self.selector.healthy())
        # One context for the upstream's https targets, made once per snapshot: building one
        # loads a CA store, far too slow for a request or a connection.
        context: ssl.SSLContext | None = None
        if any(URL(t).scheme == "https" for t in self.targets):
            pem = self._tls.ca_pem if self._tls is not None else None
            context = ssl.create_default_context(cadata=pem)  # pem: instead of the system's
        self.upstreams = tuple(
            Target(t, self._max_connections, context, self._server_name) for t in self.targets
        )
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=self._max_connections,
            ttl_dns_cache=10,
            ssl=context if context is not None else True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            # Bodies pass through as the backend encoded them; the client asked for that encoding.
            auto_decompress=False,
            # Send only what the client sent: no default Accept, Accept-Encoding, User-Agent or
            # Content-Type invented by the HTTP library.
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None),
        )

        if self.health.path is not None:
            self._checker = asyncio.create_task(
                self._check_periodically(), name=f"health-{self.name}"
            )

    async def shutdown(self) -> None:
        await cancel_and_wait(self._checker)
        self._checker = None
        for target in self.upstreams:
            await target.pool.close()
        self.upstreams = ()
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError(f"upstream {self.name} is not started")
        return self._session

    def admit(self) -> None:
        """Take a concurrency slot (the caller gives it back: ``inflight -= 1``), or refuse at
        once when full rather than queue behind a backend that is already slow."""
        if self.max_concurrency is not None and self.inflight >= self.max_concurrency:
            self.metrics.error("saturated")
            raise Unavailable(
                "The service is at capacity; try again shortly.", headers=[("Retry-After", "1")]
            )
        self.inflight += 1
        self.budget.deposit()  # every request earns a fraction of a retry

    def pick(self, exclude: int | None = None) -> int:
        return self.selector.pick(exclude)

    def succeeded(self, index: int) -> None:
        returning = self.selector.health[index].ejections > 0
        self.selector.succeeded(index)
        if returning:
            self.metrics.healthy.set(self.selector.healthy())  # back from an ejection

    def failed(self, index: int) -> None:
        if self.selector.failed(index):
            self.metrics.ejections.inc()
            log.warning("upstream_target_ejected", upstream=self.name, target=self.targets[index])
        self.metrics.healthy.set(self.selector.healthy())

    async def _check_periodically(self) -> None:
        """Active checks: GET health.path on each target; a failure counts like a failed request."""
        path = self.health.path
        timeout = aiohttp.ClientTimeout(total=min(5.0, self.health.interval))
        while True:
            await asyncio.sleep(self.health.interval)
            for index, target in enumerate(self.targets):
                try:
                    async with self.session.get(
                        f"{target}{path}", timeout=timeout, server_hostname=self._server_name
                    ) as response:
                        ok = 200 <= response.status < 300
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                now = self.selector.clock()
                if ok:
                    self.selector.recovered(index)
                else:
                    if self.selector.health[index].ejected_until <= now:
                        self.metrics.ejections.inc()
                        log.warning("upstream_check_failed", upstream=self.name, target=target)
                    # Out until at least the next check: no traffic between two failed checks.
                    wait = max(self.health.cooldown, self.health.interval)
                    self.selector.eject_until(index, now + wait)
            self.metrics.healthy.set(self.selector.healthy())
