"""The JSON Schema of gateway.yaml, generated from the models: config/gateway.schema.json.

Editors validate the file as written, before ``${VAR}`` references are replaced, so every field
that holds a number, a boolean, a duration, a size or a constrained string also accepts a string
with a reference in it; ``gateway check`` judges the value once it is interpolated.
"""

from __future__ import annotations

from typing import Any

from gateway.config.loader import REFERENCE_PATTERN
from gateway.config.registry import config_model

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_REFERENCE_DEF = "EnvironmentReference"
_REFERENCE = {"$ref": f"#/$defs/{_REFERENCE_DEF}"}
# What describes a value rather than constrains it: stays on the field when it is split.
_ANNOTATIONS = ("title", "description", "default", "examples", "deprecated")


def config_schema() -> dict[str, Any]:
    """The JSON Schema of gateway.yaml, as committed in config/gateway.schema.json."""
    schema = config_model().model_json_schema(mode="validation")
    schema = _with_references(schema)
    schema["$defs"][_REFERENCE_DEF] = {
        "type": "string",
        "pattern": REFERENCE_PATTERN,
        "description": "A ${VAR} or ${VAR:-default} reference, replaced from the environment"
        " when the file is read; the result must suit the field.",
    }
    schema["$schema"] = SCHEMA_DIALECT
    schema["title"] = "gateway.yaml"
    return schema


def _with_references(node: dict[str, Any], *, alone: bool = True) -> dict[str, Any]:
    """The schema of one value, where every scalar it may be also accepts a reference; a member
    of an anyOf is not ``alone``: the anyOf takes the reference once for all its members."""
    if "$ref" in node:
        return node
    node = dict(node)
    if "$defs" in node:
        node["$defs"] = {name: _with_references(d) for name, d in node["$defs"].items()}
    if "properties" in node:
        node["properties"] = {k: _with_references(v) for k, v in node["properties"].items()}
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _with_references(node["additionalProperties"])
    if isinstance(node.get("items"), dict):
        node["items"] = _with_references(node["items"])
    if "anyOf" in node:
        members = [_with_references(m, alone=False) for m in node["anyOf"]]
        if any(_constrained_scalar(m) for m in members) and not any(map(_any_string, members)):
            members.append(_REFERENCE)
        node["anyOf"] = members
        return node
    if alone and _constrained_scalar(node):
        outer = {k: v for k, v in node.items() if k in _ANNOTATIONS}
        inner = {k: v for k, v in node.items() if k not in _ANNOTATIONS}
        return {**outer, "anyOf": [inner, _REFERENCE]}
    return node


def _constrained_scalar(node: dict[str, Any]) -> bool:
    """A scalar that a string holding ${VAR} would not satisfy as it is written."""
    kind = node.get("type")
    if kind in ("integer", "number", "boolean"):
        return True
    if "enum" in node or "const" in node:
        return True
    return kind == "string" and not _any_string(node)


def _any_string(node: dict[str, Any]) -> bool:
    return node.get("type") == "string" and not any(
        k in node for k in ("pattern", "format", "enum", "const", "minLength", "maxLength")
    )
