"""Where an HTTP/1.1 message's body ends, and framing that is refused because it is ambiguous."""

from __future__ import annotations


class Framing:
    """How an answer says where its body ends, judged header by header.

    SECURITY: framing two parties could read differently (request or response smuggling) is
    refused: two Content-Lengths or an invalid one, a transfer coding other than one
    ``chunked``, or both framings at once. Every reader of a message judges it here: the
    data plane's server for requests, the upstream clients for answers.
    """

    __slots__ = ("chunked", "length")

    def __init__(self) -> None:
        self.length: int | None = None  # the Content-Length, once judged valid
        self.chunked = False

    def reset(self) -> None:
        """For the next head (after an interim answer, or on a connection's next exchange)."""
        self.length = None
        self.chunked = False

    def refusal(self, name: bytes, value: bytes) -> str | None:
        """Why this header makes the framing ambiguous; None for any other header."""
        size = len(name)
        if size == 14 and name.lower() == b"content-length":
            if self.length is not None:
                return "more than one Content-Length"
            digits = value.strip(b" \t")
            if not digits.isdigit():
                return "an invalid Content-Length"
            self.length = int(digits)
        elif size == 17 and name.lower() == b"transfer-encoding":
            if self.chunked or value.strip(b" \t").lower() != b"chunked":
                return "a transfer coding other than a single chunked"
            self.chunked = True
        return None

    def conflict(self) -> str | None:
        """Once the head is complete: why its framing is ambiguous, or None."""
        if self.length is not None and self.chunked:
            return "both Content-Length and Transfer-Encoding"
        return None

    @property
    def delimited(self) -> bool:
        """The body's end is announced (else, bodies allowing, it ends with the connection)."""
        return self.length is not None or self.chunked
