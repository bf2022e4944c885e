"""Opening a listener, with an error that says which one and why."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from aiohttp import web


class ListenError(Exception):
    """A listener could not be opened; the message names the config field and the reason."""


@contextlib.contextmanager
def naming_failures(field: str, host: str, port: int) -> Iterator[None]:
    """Turn a failure to bind into a ListenError that names the config field."""
    try:
        yield
    except OSError as exc:
        raise ListenError(f"{field}: cannot listen on {host}:{port}: {exc.strerror}") from None


async def listen(
    runner: web.BaseRunner, host: str, port: int, field: str, reuse_port: bool
) -> tuple[str, int]:
    """Bind runner's server to host:port; the address it got (port 0 picks one)."""
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=1024)
    with naming_failures(field, host, port):
        await site.start()
    address = runner.addresses[-1]
    return str(address[0]), int(address[1])
