"""Console sessions in the admin process's memory: random ids, kept only as hashes, that expire."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

IDLE_TIMEOUT = 12 * 3600.0  # a session unused this long is over
MAX_AGE = 24 * 3600.0  # and any session is over this long after its login
MAX_SESSIONS = 10_000  # beyond this, the least recently used session ends


@dataclass(slots=True)
class Session:
    actor: str  # the name of the admin token that logged in
    csrf_token: str  # what every state-changing request of this session must carry
    created: float
    seen: float


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    """Open sessions by the hash of their id, least recently used first.

    SECURITY: the id (256 random bits) exists only in the cookie; a copy of this process's
    memory holds hashes, which open no session.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        idle_timeout: float = IDLE_TIMEOUT,
        max_age: float = MAX_AGE,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        self._clock = clock
        self._idle = idle_timeout
        self._max_age = max_age
        self._max_sessions = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, actor: str) -> tuple[str, Session]:
        """A new session for ``actor``: its id (for the cookie, and nowhere else) and itself."""
        now = self._clock()
        self._drop_idle(now)
        while len(self._sessions) >= self._max_sessions:
            self._sessions.popitem(last=False)
        session_id = secrets.token_urlsafe(32)
        session = Session(actor, secrets.token_urlsafe(32), now, now)
        self._sessions[_hash(session_id)] = session
        return session_id, session

    def find(self, session_id: str | None) -> Session | None:
        """The live session with this id, marked as used now; None for none or an expired one."""
        if not session_id:
            return None
        key = _hash(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self._clock()
        if now - session.seen >= self._idle or now - session.created >= self._max_age:
            del self._sessions[key]
            return None
        session.seen = now
        self._sessions.move_to_end(key)
        return session

    def close(self, session_id: str | None) -> Session | None:
        """End a session (logout): its id opens nothing from now on."""
        if not session_id:
            return None
        return self._sessions.pop(_hash(session_id), None)

    def _drop_idle(self, now: float) -> None:
        # Least recently used first: the idle ones are at the front.
        while self._sessions:
            key, session = next(iter(self._sessions.items()))
            if now - session.seen < self._idle:
                break
            del self._sessions[key]
