"""The upstream side of the data path: HTTP/1.1 connections on asyncio Protocols, pooled per target.

Built for forwarding only (no cookies, redirects, decompression or invented headers); the
response is parsed by llhttp through httptools, never by hand.
"""

from gateway.dataplane.upstream_http.connection import UpstreamConnection
from gateway.dataplane.upstream_http.errors import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamReadTimeout,
)
from gateway.dataplane.upstream_http.pool import TargetPool
from gateway.dataplane.upstream_http.response import UpstreamResponse

__all__ = [
    "TargetPool",
    "UpstreamConnectError",
    "UpstreamConnectTimeout",
    "UpstreamConnection",
    "UpstreamDisconnected",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamReadTimeout",
    "UpstreamResponse",
]
