"""Read gateway.yaml: safe YAML, ${VAR} interpolation, validation, every problem with its path."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.config.models import GatewayConfig
from gateway.validation import describe_errors, join_path

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
        problems.extend(describe_errors(exc, GatewayConfig))
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
        return {k: _interpolate(v, join_path(path, k), env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]", env, problems) for i, v in enumerate(value)]
    return value
