"""Which webhook targets may be called: public http(s) addresses only (SSRF protection)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Ranges a webhook must never reach, beyond what the ipaddress flags already say.
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_RESOLVE_SECONDS = 3.0  # a registration waits this long for DNS
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}


class UnsafeTarget(ValueError):
    """A target the gateway refuses to call; the message says why."""


def address_refusal(ip: IPAddress) -> str | None:
    """Why this address may not be a webhook target, or None when it is public.

    SECURITY: checked when an endpoint is registered and again on the address actually
    connected to, so a DNS answer that changes (rebinding) cannot slip through.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv4 hidden in IPv6 is how filters that look at one family get bypassed: refused.
        if ip.ipv4_mapped is not None or ip.sixtofour is not None or ip.teredo is not None:
            return "an IPv6 address that carries an IPv4 one"
        if ip in _NAT64 or ip in _NAT64_LOCAL:
            return "a NAT64 address"
    if ip in _METADATA:
        return "a cloud metadata address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "a carrier-grade NAT address"
    if ip.is_private or ip.is_reserved or not ip.is_global:
        return "a private or reserved address"
    return None


def check_url(url: str, *, allow_private: bool = False) -> URL:
    """A webhook URL as given, if it is http(s) with a host; a literal address is checked now.

    Names are resolved, and their addresses checked, when connecting.
    """
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise UnsafeTarget("must be an http(s) URL with a host")
    if parsed.user or parsed.password:
        raise UnsafeTarget("must not carry credentials")
    if not allow_private:
        try:
            ip = ipaddress.ip_address(parsed.host.strip("[]"))
        except ValueError:
            return parsed
        reason = address_refusal(ip)
        if reason:
            raise UnsafeTarget(f"points to {reason}")
    return parsed


async def check_registration(url: str, *, allow_private: bool) -> None:
    """At registration, a name is resolved too: any address it has now must be public.

    Connect time checks again (the answer may change); this one gives the admin a clear
    error at once instead of a dead endpoint later.
    """
    parsed = check_url(url, allow_private=allow_private)
    host = (parsed.host or "").strip("[]")
    if allow_private:
        return
    try:
        ipaddress.ip_address(host)
        return  # a literal address, checked above
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, parsed.port, type=socket.SOCK_STREAM), _RESOLVE_SECONDS
        )
    except (OSError, TimeoutError, ValueError):  # ValueError: a name IDNA cannot encode
        raise UnsafeTarget(f"names a host that does not resolve ({host})") from None
    for info in infos:
        reason = address_refusal(ipaddress.ip_address(info[4][0]))
        if reason:
            raise UnsafeTarget(f"names a host that resolves to {reason} ({host})")
