"""Match (host, method, path) to a route, compiled once per config snapshot."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from gateway.errors import MethodNotAllowed, RouteNotFound
from gateway.http.paths import compile_template

T = TypeVar("T")


@dataclass(slots=True, frozen=True)
class _Entry(Generic[T]):
    target: T
    methods: frozenset[str] | None  # None: every method
    host: str | None


@dataclass(slots=True)
class Match(Generic[T]):
    target: T
    params: dict[str, str] = field(default_factory=dict)


class Router(Generic[T]):
    """Literal paths are a dict lookup; templates are tried in file order after them.

    What is matched is the raw path as sent (percent-encoding and all), so the path forwarded
    upstream is byte for byte the one the route was chosen for.
    """

    def __init__(self, routes: Sequence[tuple[str, Sequence[str] | None, str | None, T]]) -> None:
        self._literal: dict[str, list[_Entry[T]]] = {}
        self._templates: list[tuple[re.Pattern[str], _Entry[T]]] = []
        for path, methods, host, target in routes:
            regex, _ = compile_template(path)
            entry = _Entry(target, frozenset(methods) if methods else None, host)
            if regex is None:
                self._literal.setdefault(path, []).append(entry)
            else:
                self._templates.append((regex, entry))

    def match(self, method: str, host: str, path: str) -> Match[T]:
        """The route for a request, or RouteNotFound / MethodNotAllowed (with Allow)."""
        allowed: set[str] = set()
        path_matched = False
        for entry in self._literal.get(path, ()):
            if entry.host is not None and entry.host != host:
                continue
            if entry.methods is None or method in entry.methods:
                return Match(entry.target)
            path_matched = True
            allowed |= entry.methods
        for regex, entry in self._templates:
            if entry.host is not None and entry.host != host:
                continue
            m = regex.match(path)
            if m is None:
                continue
            if entry.methods is None or method in entry.methods:
                return Match(entry.target, m.groupdict())
            path_matched = True
            allowed |= entry.methods
        if path_matched:
            raise MethodNotAllowed(allowed)
        raise RouteNotFound()
