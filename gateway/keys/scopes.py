"""Scopes: a key's grants, widened by ``scopes.implies`` and ``resource:*`` wildcards."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


class ScopePolicy:
    """Decides whether granted scopes cover a required one; built once per config."""

    def __init__(self, implies: Mapping[str, Iterable[str]]) -> None:
        self._implies = {k: tuple(v) for k, v in implies.items()}

    def expand(self, granted: Iterable[str]) -> frozenset[str]:
        """The granted scopes and everything they imply, transitively (cycles are harmless)."""
        result: set[str] = set()
        stack = list(granted)
        while stack:
            scope = stack.pop()
            if scope not in result:
                result.add(scope)
                stack.extend(self._implies.get(scope, ()))
        return frozenset(result)

    @staticmethod
    def covers(expanded: frozenset[str], required: str) -> bool:
        if required in expanded or "*" in expanded:
            return True
        # contacts:* covers contacts:read and contacts:export:csv.
        parts = required.split(":")
        return any(":".join(parts[:i]) + ":*" in expanded for i in range(1, len(parts)))

    def missing(self, expanded: frozenset[str], required: Iterable[str]) -> list[str]:
        return [scope for scope in required if not self.covers(expanded, scope)]
