"""Opening a listener, with an error that says which one and why."""

from __future__ import annotations

from aiohttp import web


class ListenError(Exception):
    """A listener could not be opened; the message names the config field and the reason."""


async def listen(
    runner: web.BaseRunner, host: str, port: int, field: str, reuse_port: bool
) -> tuple[str, int]:
    """Bind runner's server to host:port; the address it got (port 0 picks one)."""
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        raise ListenError(f"{field}: cannot listen on {host}:{port}: {exc.strerror}") from None
    address = runner.addresses[-1]
    return str(address[0]), int(address[1])
