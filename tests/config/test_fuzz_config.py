"""Config fuzzing: whatever a file holds, the loader answers with a config or a ConfigError whose
every problem names a field path (or says the file itself is unreadable), and nothing else.

Deterministic and bounded for CI: derandomized examples, no example database.
"""

from __future__ import annotations

import copy
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from gateway.config import ConfigError, config_model, parse_config
from gateway.config.validation import join_path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = (ROOT / "gateway.yaml").read_bytes()

FUZZ = settings(max_examples=200)  # the rest is the suite's profile (tests/conftest.py)

# Problems about the file as a whole carry no field path.
FILE_LEVEL = re.compile(r"^(line \d+, column \d+: |the file |cannot read the file)")


def _field_names(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[str]:
    names: set[str] = set()
    if model in seen:
        return names
    seen.add(model)
    for name, field in model.model_fields.items():
        names.add(name)
        stack = [field.annotation]
        while stack:
            annotation = stack.pop()
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                names |= _field_names(annotation, seen)
            stack.extend(typing.get_args(annotation))
            if isinstance(annotation, types.UnionType):
                stack.extend(annotation.__args__)
    return names


FIELD_NAMES = _field_names(config_model(), set())  # the plugins' fields included

# The shipped file plus every section it leaves out, so that every field is in reach.
BASE: dict[str, Any] = yaml.safe_load(SHIPPED)
BASE.update(
    {
        "server": {**BASE["server"], "max_header_size": "8KiB", "max_headers": 100},
        "keys": {**BASE["keys"], "cache_ttl": "30s", "last_used_interval": "1m"},
        "identity": {"enabled": True, "path": "/v1/me", "fields": {"orgId": "tenantId"}},
        "reload": {"watch": False, "interval": "1s"},
        "cors": {"origins": ["https://app.example.com"], "max_age": "10m", "credentials": False},
        "trusted_proxies": ["10.0.0.0/8"],
    }
)
BASE["webhooks"].update(
    {"jitter": 0.1, "secret_overlap": "1d", "poll_interval": "500ms", "retention": "30d"}
)
BASE["upstreams"]["crm"] = {
    "targets": ["http://10.0.0.5:8000"],
    "sandbox": ["http://10.0.0.9:8000"],
    "timeouts": {"connect": "2s", "read": "30s"},
    "max_connections": 100,
    "max_concurrency": 50,
    "retry_budget": 0.2,
    "health": {"failures": 3, "cooldown": "5s", "max_cooldown": "5m", "path": "/health"},
}
BASE["routes"].append(
    {
        "path": "/v1/contacts/{id}",
        "upstream": "crm",
        "host": "api.example.com",
        "timeouts": {"read": "10s"},
        "max_body_size": "1MiB",
        "deprecation": {"deprecated_at": "2026-01-01", "sunset_at": "2027-01-01"},
        "headers": {"request": {"set": {"X-Env": "prod"}}, "response": {"remove": ["Server"]}},
        "cors": {"origins": ["*"]},
        "rate_limits": [{"name": "contacts", "requests": 10, "per": "1m", "scope": "org"}],
    }
)
parse_config(yaml.safe_dump(BASE).encode(), source="base.yaml", env={})  # the base is valid


def document_paths(value: Any, path: str = "") -> set[str]:
    """Every path in a document, spelled as problems spell them."""
    paths = {path or "<root>"}
    if isinstance(value, dict):
        for key, item in value.items():
            paths |= document_paths(item, join_path(path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            paths |= document_paths(item, f"{path}[{i}]")
    return paths


def names_a_path(problem: str, paths: set[str]) -> bool:
    """The problem starts with a path of the document, or with a field missing under one."""
    if FILE_LEVEL.match(problem):
        return True
    for path in paths:
        if problem.startswith(f"{path}: "):
            return True
        prefix = "" if path == "<root>" else f"{path}."
        if problem.startswith(prefix):
            field, sep, _ = problem[len(prefix) :].partition(": ")
            if sep and field in FIELD_NAMES:
                return True
    return False


def oracle(text: bytes) -> Any:
    """The document as plain YAML reads it, to know its paths; None if it does not read."""
    try:
        return yaml.safe_load(text)
    except Exception:  # the oracle only; what the loader says is checked below
        return None


def finite_and_bounded(value: Any) -> bool:
    """No NaN, no infinity, no number past 64 bits anywhere in a config that was accepted."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int):
        return abs(value) < 2**63
    if isinstance(value, dict):
        return all(map(finite_and_bounded, value.values()))
    if isinstance(value, list | tuple):
        return all(map(finite_and_bounded, value))
    return True


def check(text: bytes, env: dict[str, str] | None = None) -> None:
    try:
        loaded = parse_config(text, source="fuzz.yaml", env=env or {})
    except ConfigError as exc:
        problems = exc.problems
    else:
        assert finite_and_bounded(loaded.config.model_dump()), loaded.config
        return
    assert problems
    document = oracle(text)
    paths = document_paths(document) if isinstance(document, dict) else set()
    for problem in problems:
        assert names_a_path(problem, paths), problem


NAMES = sorted(FIELD_NAMES)
keys = st.one_of(
    st.sampled_from(NAMES), st.text(max_size=8), st.integers(-2, 2), st.booleans(), st.none()
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([0, -1, 2**63, 10**30, -(10**30), 10**400]),
    st.floats(),  # NaN and infinities included
    st.text(max_size=20),
    st.sampled_from(
        [
            "5s",
            "0s",
            "-1s",
            "25h",
            "8d",
            "1ms",
            "1.5",
            "10MiB",
            "2GiB",
            "1e400",
            "nan",
            "inf",
            "${X}",
            "${X:-5s}",
            "${UNSET}",
            "$${X}",
            "http://x",
            "ftp://x",
            "/v1/{x}",
            "/v1/{x:(}",
            "*",
            "",
            "on",
            "2026-01-01",
            "10.0.0.0/8",
            "[::1]",
            "\x00",
            "\ud800",
        ]
    ),
    st.dates(),
    st.datetimes(),
    st.binary(max_size=8),
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=3),
    max_leaves=12,
)


def dump(document: Any) -> bytes:
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=False).encode()


@FUZZ
@given(st.dictionaries(keys, values, max_size=6))
def test_random_documents_get_problems_with_paths(document: dict[Any, Any]) -> None:
    check(dump(document))


def _containers(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths (as key tuples) of every value in the document."""
    found = [at]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _containers(item, (*at, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _containers(item, (*at, i))
    return found


BASE_PATHS = _containers(BASE)[1:]


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(BASE_PATHS),
            st.sampled_from(["replace", "delete", "sibling", "reference"]),
            values,
        ),
        min_size=1,
        max_size=3,
    ),
    st.text(max_size=12),
)
def test_mutations_of_the_shipped_config_get_problems_with_paths(
    mutations: list[tuple[tuple[Any, ...], str, Any]], from_env: str
) -> None:
    document = copy.deepcopy(BASE)
    for path, action, value in mutations:
        parent: Any = document
        try:
            for key in path[:-1]:
                parent = parent[key]
            last = path[-1]
            parent[last]  # still there after the mutations before?
        except (KeyError, IndexError, TypeError):
            continue
        if not isinstance(parent, dict | list):  # replaced by a scalar before
            continue
        if action == "replace":
            parent[last] = value
        elif action == "delete":
            del parent[last]
        elif action == "sibling" and isinstance(parent, dict):
            parent[f"{last}_x"] = value
        else:
            parent[last] = "${FUZZ}" if isinstance(value, bool) else "${FUZZ:-0}"
    check(dump(document), env={"FUZZ": from_env})


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_get_problems_with_paths(data: bytes) -> None:
    check(data)


@FUZZ
@given(
    st.lists(
        st.tuples(st.integers(0, len(SHIPPED)), st.integers(0, 8), st.binary(max_size=8)),
        min_size=1,
        max_size=4,
    )
)
def test_byte_edits_of_the_shipped_config_get_problems_with_paths(
    edits: list[tuple[int, int, bytes]],
) -> None:
    text = SHIPPED
    for at, cut, insert in edits:
        text = text[:at] + insert + text[at + cut :]
    check(text)
