"""Small JSON documents (a JWKS, an OIDC discovery document) fetched with hard limits."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from yarl import URL

MAX_BYTES = 1 << 20  # a JWKS is a few KiB; anything near this is not one
MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class FetchError(Exception):
    """The document could not be had; the message says why (for logs and readiness)."""


async def fetch_json(
    session: aiohttp.ClientSession,
    url: str,
    *,
    time_limit: float,
    max_bytes: int = MAX_BYTES,
) -> Any:
    """GET ``url`` and parse its JSON body, following a few redirects on the same scheme."""
    target = URL(url)
    for _ in range(MAX_REDIRECTS + 1):
        try:
            # Redirects are followed here, not by aiohttp, so that each hop is checked.
            async with session.get(
                target,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=time_limit),
                headers={"Accept": "application/json"},
            ) as answer:
                if answer.status in _REDIRECTS and "Location" in answer.headers:
                    next_target = target.join(URL(answer.headers["Location"]))
                    # SECURITY: an https key source must never be downgraded to plain http.
                    if next_target.scheme != target.scheme:
                        raise FetchError(f"{target} redirects to another scheme")
                    target = next_target
                    continue
                if answer.status != 200:
                    raise FetchError(f"{target} answered HTTP {answer.status}")
                body = await read_capped(answer, max_bytes)
        except TimeoutError:
            raise FetchError(f"{target} did not answer within {time_limit:g}s") from None
        except aiohttp.ClientError as exc:
            raise FetchError(f"{target}: {exc.__class__.__name__}: {exc}") from None
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise FetchError(f"{target} did not answer JSON") from None
    raise FetchError(f"{url} redirects more than {MAX_REDIRECTS} times")


async def read_capped(answer: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    # SECURITY: counted as it arrives (decompressed), so a huge or endless body costs nothing.
    if (answer.content_length or 0) > max_bytes:
        raise FetchError(f"{answer.url} is larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in answer.content.iter_any():
        size += len(chunk)
        if size > max_bytes:
            raise FetchError(f"{answer.url} is larger than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
