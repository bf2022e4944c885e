"""Verified tokens by hash until they expire: a repeated token costs a dict lookup."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Entry(Generic[T]):
    value: T
    deadline: float  # the token's exp, leeway included
    generation: int  # of the key set that verified it


class VerifiedTokens(Generic[T]):
    """At most ``max_entries`` answers, the least recently used evicted first.

    An entry made under another generation of the key set is dropped: a key removed at the
    authorization server must not keep its tokens valid here until they expire.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, _Entry[T]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes, *, now: float, generation: int) -> T | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if now >= entry.deadline or entry.generation != generation:
            del self._entries[digest]
            return None
        self._entries.move_to_end(digest)
        return entry.value

    def put(self, digest: bytes, value: T, *, deadline: float, generation: int) -> None:
        self._entries[digest] = _Entry(value, deadline, generation)
        self._entries.move_to_end(digest)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
