"""What can go wrong talking to an upstream: one tree, so the proxy maps each class once."""

from __future__ import annotations


class UpstreamError(Exception):
    """A failed exchange with an upstream.

    ``sent`` says whether any byte of the request was written: when it is False the upstream
    cannot have acted on the request, which the idempotency plugin and the retry rules rely on.
    ``received`` says whether any byte of a response arrived.
    """

    def __init__(self, message: str, *, sent: bool, received: bool = False) -> None:
        super().__init__(message)
        self.sent = sent
        self.received = received


class UpstreamConnectError(UpstreamError):
    """The connection could not be opened (refused, unreachable, name not resolved)."""


class UpstreamConnectTimeout(UpstreamError):
    """No connection (or no free slot in the pool) within the connect timeout."""


class UpstreamReadTimeout(UpstreamError):
    """The upstream went quiet for longer than the read timeout while an answer was awaited."""


class UpstreamDisconnected(UpstreamError):
    """The upstream closed the connection before its answer was complete."""


class UpstreamProtocolError(UpstreamError):
    """The answer is malformed or its framing ambiguous, so it is refused rather than forwarded.

    SECURITY: forwarding a response whose length two parties could read differently is how
    response smuggling and cache poisoning start; one class, so the proxy answers 502 for all.
    """
