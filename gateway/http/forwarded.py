"""Who the client is, believing X-Forwarded-* only from trusted proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import NamedTuple

from gateway.http.headers import FORWARDED_FOR, FORWARDED_HOST, FORWARDED_PROTO, field_text
from gateway.http.request import Request

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def address_in(address: str, networks: Sequence[IPNetwork]) -> bool:
    """Whether an address (IPv4-mapped IPv6 counts as IPv4) is in any of the networks."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


class Forwarded(NamedTuple):
    """A tuple, not a frozen dataclass: one is made per request, at half the cost."""

    client_ip: str
    forwarded_for: str  # the X-Forwarded-For we send upstream, ending with our peer
    proto: str
    host: str


class ForwardedResolver:
    """Derives the client address and the X-Forwarded-* values to send upstream."""

    def __init__(self, trusted: Sequence[IPNetwork]) -> None:
        self._trusted = tuple(trusted)

    def _is_trusted(self, address: str) -> bool:
        return address_in(address, self._trusted)

    def resolve(self, request: Request) -> Forwarded:
        peer = request.remote
        host = field_text(request.headers.get("Host", ""))
        proto = "https" if request.secure else "http"
        # SECURITY: an untrusted peer's X-Forwarded-* are ignored entirely (and stripped later).
        if not self._trusted or not self._is_trusted(peer):
            return Forwarded(peer, peer, proto, host)
        chain = [
            hop.strip()
            for value in request.headers.getall(FORWARDED_FOR, ())
            for hop in value.split(",")
            if hop.strip()
        ]
        client = peer
        # Walk from the nearest hop outwards; the first address we do not trust is the client.
        for hop in reversed(chain):
            client = hop
            if not self._is_trusted(hop):
                break
        # Values sent upstream and logged: bytes that are not UTF-8 are kept, as text.
        forwarded_for = field_text(", ".join([*chain, peer]))
        inbound_proto = request.headers.get(FORWARDED_PROTO, "").strip().lower()
        if inbound_proto in ("http", "https"):
            proto = inbound_proto
        inbound_host = field_text(request.headers.get(FORWARDED_HOST, "").strip())
        return Forwarded(field_text(client), forwarded_for, proto, inbound_host or host)
