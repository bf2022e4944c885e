"""Read gateway.yaml: safe YAML, ${VAR} interpolation, validation, every problem with its path."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from gateway.config.document import MAX_FILE_SIZE, UnreadableDocument, read_document
from gateway.config.registry import config_model
from gateway.config.root import GatewayConfig
from gateway.config.validation import describe_errors, join_path, shown

# A reference to the environment; the JSON Schema lets any scalar be written as one.
REFERENCE_PATTERN = r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}"
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A config that cannot be used, with every problem found, each prefixed with its path.

    A problem about the file as a whole (unreadable, not YAML, not a mapping) starts with
    ``line L, column C:``, ``the file`` or ``cannot read the file``.
    """

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(problems))


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    config: GatewayConfig
    source: str
    digest: str  # short SHA-256 of the file as written (no secrets from the environment in it)


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> LoadedConfig:
    """Load and validate a config file, or raise ConfigError listing every problem."""
    source = str(path)
    try:
        with open(path, "rb") as file:
            text = file.read(MAX_FILE_SIZE + 1)  # bounded: the path may be a device or a FIFO
    except OSError as exc:
        raise ConfigError(source, [f"cannot read the file: {exc.strerror or exc}"]) from None
    except ValueError as exc:  # a NUL in the path
        raise ConfigError(source, [f"cannot read the file: {exc}"]) from None
    return parse_config(text, source=source, env=os.environ if env is None else env)


def parse_config(text: bytes, *, source: str, env: Mapping[str, str]) -> LoadedConfig:
    """Validate a config, or raise ConfigError listing every problem; nothing else escapes."""
    try:
        raw = read_document(text)
    except UnreadableDocument as exc:
        raise ConfigError(source, [exc.problem]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, ["the file must hold a mapping of settings"])
    problems: list[str] = []
    data = _interpolate(raw, "", env, problems)
    upstreams = data.get("upstreams")
    context = {"upstreams": set(upstreams) if isinstance(upstreams, dict) else set()}
    model = config_model()  # the core's fields and every plugin's
    try:
        config = model.model_validate(data, context=context)
    except ValidationError as exc:
        problems.extend(describe_errors(exc, model))
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
        result: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):  # YAML reads on, no, 1, ~ or 2026-01-01 as non-text
                problems.append(
                    f"{path or '<root>'}: key {shown(key)} is not text; write it in quotes"
                )
                continue
            result[key] = _interpolate(item, join_path(path, key), env, problems)
        return result
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]", env, problems) for i, v in enumerate(value)]
    return value
