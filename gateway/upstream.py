"""An upstream: its targets in round robin and one pooled HTTP client session."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import aiohttp

from gateway.metrics import UpstreamMetrics


class UpstreamPool:
    """One upstream: its targets in round robin, one pooled client session, its timeouts."""

    def __init__(
        self,
        name: str,
        targets: Sequence[str],
        *,
        max_connections: int,
        preserve_host: bool,
        metrics: UpstreamMetrics,
    ) -> None:
        self.name = name
        self.targets = tuple(t.rstrip("/") for t in targets)
        self.preserve_host = preserve_host
        self.metrics = metrics
        self._max_connections = max_connections
        self._cursor = itertools.cycle(range(len(self.targets)))
        self._session: aiohttp.ClientSession | None = None

    async def startup(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=self._max_connections, ttl_dns_cache=10
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

    async def shutdown(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError(f"upstream {self.name} is not started")
        return self._session

    def first_target(self) -> int:
        return next(self._cursor)
