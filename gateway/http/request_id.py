"""Request ids: keep a client's id when it is safe, else make a sortable one."""

from __future__ import annotations

import re
import time
from contextvars import ContextVar
from random import getrandbits

_SAFE = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")


# The id of the request being handled, for every log line written while it is (each request
# runs in a task of its own, so each sees its own value).
current_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def new_request_id(prefix: str = "") -> str:
    """The prefix (ids.request), then 28 hex characters: milliseconds since the epoch and 64
    random bits; sorts by time.

    An id has to be unique, not secret: Python's generator (reseeded in every forked worker)
    serves, where os.urandom would cost a system call per request.
    """
    return f"{prefix}{time.time_ns() // 1_000_000:012x}{getrandbits(64):016x}"


def accept_request_id(values: list[str], prefix: str = "") -> str:
    """The client's X-Request-Id if there is exactly one and it is plain and short, else a new one.

    SECURITY: the id is echoed in headers and logs, so CR/LF, quotes or megabytes never pass.
    """
    if len(values) == 1 and _SAFE.match(values[0]):
        return values[0]
    return new_request_id(prefix)
