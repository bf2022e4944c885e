"""One webhook attempt: a signed POST to an address that was checked, and what came of it."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from gateway.config.webhooks import LegacyKey
from gateway.webhooks.signing import legacy_signature, signed_headers
from gateway.webhooks.targets import UnsafeTarget, address_refusal, check_url

_DELAY_SECONDS = re.compile(r"^[0-9]{1,10}$")  # ASCII digits only (str.isdigit takes "²")
RESPONSE_KEPT = 1024  # bytes of each answer kept in the delivery history
USER_AGENT = "gateway-webhooks/1"


class CheckingResolver(AbstractResolver):
    """Resolves names, then keeps only addresses a webhook may reach.

    SECURITY: aiohttp connects to exactly the addresses returned here, so a name that
    resolves to a private address at send time (DNS rebinding) is refused, not called.
    """

    def __init__(self) -> None:
        self._resolver = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._resolver.resolve(host, port, family)
        allowed = [r for r in found if address_refusal(ipaddress.ip_address(r["host"])) is None]
        if not allowed:
            reason = address_refusal(ipaddress.ip_address(found[0]["host"])) if found else None
            raise UnsafeTarget(f"{host} resolves to {reason or 'no address'}")
        return allowed

    async def close(self) -> None:
        await self._resolver.close()


@dataclass(frozen=True, slots=True)
class Result:
    status: int | None  # None: no answer (refused, timed out, unreachable)
    duration: float
    error: str | None = None
    response: str = ""
    retry_after: float | None = None  # seconds, from a 429 or 5xx answer

    @property
    def success(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class Sender:
    """Sends attempts over one pooled session; private targets only when the config allows."""

    def __init__(self, *, allow_private: bool, max_connections: int) -> None:
        self.allow_private = allow_private
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def startup(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            resolver=None if self.allow_private else CheckingResolver(),
            ttl_dns_cache=10,
        )
        # trust_env stays off: an HTTP(S)_PROXY in the environment must not carry webhooks.
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def shutdown(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self,
        url: str,
        *,
        secrets: list[str],
        message_id: str,
        payload: bytes,
        time_limit: float,
        legacy_header: str | None,
        legacy_key: LegacyKey,
        clock: float,
    ) -> Result:
        if self._session is None:
            raise RuntimeError("the sender is not started")
        started = time.perf_counter()

        def failed(error: str, status: int | None = None) -> Result:
            return Result(status, time.perf_counter() - started, error)

        try:
            # A literal address never reaches the resolver, so it is checked here.
            target = check_url(url, allow_private=self.allow_private)
        except UnsafeTarget as exc:
            return failed(f"refused: the URL {exc}")
        timestamp = int(clock)  # fresh for every attempt, and so is the signature
        headers = signed_headers(secrets, message_id, timestamp, payload)
        headers["Content-Type"] = "application/json"
        headers["User-Agent"] = USER_AGENT
        if legacy_header is not None:
            # Like webhook-signature: during a secret rotation, one value per secret.
            headers[legacy_header] = " ".join(
                legacy_signature(s, payload, legacy_key) for s in secrets
            )
        try:
            async with self._session.post(
                target,
                data=payload,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=time_limit),
            ) as answer:
                body = await answer.content.read(RESPONSE_KEPT)
                status = answer.status
                retry_after = _retry_after(answer.headers.get("Retry-After"), clock)
        except UnsafeTarget as exc:
            return failed(f"refused: {exc}")
        except TimeoutError:
            return failed(f"no answer within {time_limit:g}s")
        except aiohttp.ClientConnectorError as exc:
            cause = exc.os_error if isinstance(exc.os_error, UnsafeTarget) else None
            return failed(f"refused: {cause}" if cause else f"cannot connect: {exc.os_error}")
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            # ValueError: a host name the resolver cannot encode (UnicodeError), and the like.
            return failed(f"{type(exc).__name__}: {exc}")
        duration = time.perf_counter() - started
        text = body.decode("utf-8", "replace")
        error = None
        if 300 <= status < 400:
            error = "redirects are not followed"
        elif not 200 <= status < 300:
            error = f"answered {status}"
        if status != 429 and status < 500:
            retry_after = None
        return Result(status, duration, error, text, retry_after)


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a Retry-After of delay-seconds or an HTTP-date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if _DELAY_SECONDS.match(value):
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
