"""Read gateway.yaml: safe YAML, ${VAR} interpolation, validation, every problem with its path."""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from gateway.config.models import GatewayConfig

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A config that cannot be used, with every problem found, each prefixed with its path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(problems))


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    config: GatewayConfig
    source: str
    digest: str  # short SHA-256 of the file as written (no secrets from the environment in it)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> LoadedConfig:
    """Load and validate a config file, or raise ConfigError listing every problem."""
    source = str(path)
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(source, [f"cannot read the file: {exc.strerror}"]) from None
    return parse_config(text, source=source, env=os.environ if env is None else env)


def parse_config(text: bytes, *, source: str, env: Mapping[str, str]) -> LoadedConfig:
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"{where}{problem}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, ["the file must hold a mapping of settings"])
    problems: list[str] = []
    data = _interpolate(raw, "", env, problems)
    upstreams = data.get("upstreams")
    context = {"upstreams": set(upstreams) if isinstance(upstreams, dict) else set()}
    try:
        config = GatewayConfig.model_validate(data, context=context)
    except ValidationError as exc:
        problems.extend(_describe(err) for err in exc.errors(include_url=False))
    if problems:
        raise ConfigError(source, problems)
    return LoadedConfig(config=config, source=source, digest=hashlib.sha256(text).hexdigest()[:12])


def _interpolate(value: Any, path: str, env: Mapping[str, str], problems: list[str]) -> Any:
    """Replace ${VAR} and ${VAR:-default} in string values; $$ is a literal $."""
    if isinstance(value, str):
        if "$" not in value:
            return value

        def substitute(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            if name in env and (env[name] != "" or default is None):
                return env[name]
            if default is not None:
                return default
            problems.append(
                f"{path or '<root>'}: environment variable {name} is not set"
                f" (write ${{{name}:-default}} to give a default)"
            )
            return ""

        return _VAR.sub(substitute, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, _join(path, k), env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]", env, problems) for i, v in enumerate(value)]
    return value


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _loc_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path = f"{path}[{part}]" if isinstance(part, int) else _join(path, part)
    return path or "<root>"


def _describe(err: Any) -> str:
    loc: tuple[int | str, ...] = tuple(err["loc"])
    kind: str = err["type"]
    ctx: dict[str, Any] = err.get("ctx") or {}
    got = err.get("input")
    if kind == "extra_forbidden":
        known = _fields_at(loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else f" (known: {', '.join(known)})"
        return f"{_loc_path(loc)}: unknown key{suggestion}"
    if kind == "missing":
        return f"{_loc_path(loc)}: required"
    if kind == "value_error":
        message = str(ctx.get("error", err["msg"]))
        # A model-level check names its own field first: "url: required when ..."
        field, sep, rest = message.partition(": ")
        if sep and field in _fields_at(loc):
            return f"{_loc_path((*loc, field))}: {rest}"
        return f"{_loc_path(loc)}: {message}"
    bounds = {
        "greater_than": (">", "gt"),
        "greater_than_equal": (">=", "ge"),
        "less_than": ("<", "lt"),
        "less_than_equal": ("<=", "le"),
    }
    if kind in bounds:
        op, key = bounds[kind]
        return f"{_loc_path(loc)}: must be {op} {ctx[key]} (got {got!r})"
    if kind == "literal_error":
        return f"{_loc_path(loc)}: must be one of {ctx['expected']} (got {got!r})"
    simple = {
        "int_type": "must be a whole number",
        "int_parsing": "must be a whole number",
        "int_from_float": "must be a whole number",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "string_type": "must be a string",
        "list_type": "must be a list",
        "tuple_type": "must be a list",
        "dict_type": "must be a mapping",
        "model_type": "must be a mapping",
        "model_attributes_type": "must be a mapping",
    }
    if kind in simple:
        return f"{_loc_path(loc)}: {simple[kind]} (got {got!r})"
    message = str(err["msg"])
    return f"{_loc_path(loc)}: {message[:1].lower()}{message[1:]} (got {got!r})"


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    """Field names of the model found by following loc from the root, for 'did you mean'."""
    annotation: Any = GatewayConfig
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return []
            annotation = field.annotation
            continue
        args = typing.get_args(annotation)
        if not args:
            return []
        annotation = args[-1] if typing.get_origin(annotation) is dict else args[0]
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """X | None -> X, so that optional sections are walked into."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation
