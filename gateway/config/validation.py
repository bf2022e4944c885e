"""Turn pydantic validation errors into one line per problem: ``routes[2].upstream: why``."""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError


def describe_errors(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    """Every problem, in order, each prefixed with the path of the field it concerns."""
    return [_describe(err, root) for err in exc.errors(include_url=False)]


def shown(value: Any) -> str:
    """A value as a problem quotes it: its repr, shortened when long."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        return f"<a number of about {int(value.bit_length() * 0.30103)} digits>"
    return text if len(text) <= 60 else f"{text[:40]}...{text[-8:]} ({len(text)} characters)"


# What a secret is shown as, in problems and in the config the admin API returns.
REDACTED = "***"


def redact_url(url: str) -> str:
    """redis://user:secret@host/0?password=secret -> redis://***@host/0?password=***"""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = f"{REDACTED}@{rest.rpartition('@')[2]}"
    rest = re.sub(r"(?i)(password=)[^&]*", rf"\g<1>{REDACTED}", rest)
    return f"{scheme}{sep}{rest}"


def join_path(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _loc_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path = f"{path}[{part}]" if isinstance(part, int) else join_path(path, part)
    return path or "<root>"


def _describe(err: Any, root: type[BaseModel]) -> str:
    loc: tuple[int | str, ...] = tuple(err["loc"])
    kind: str = err["type"]
    ctx: dict[str, Any] = err.get("ctx") or {}
    got = err.get("input")
    if kind == "extra_forbidden":
        known = _fields_at(root, loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else f" (known: {', '.join(known)})"
        return f"{_loc_path(loc)}: unknown key{suggestion}"
    if kind == "missing":
        return f"{_loc_path(loc)}: required"
    if kind == "value_error":
        message = str(ctx.get("error", err["msg"]))
        # A model-level check names its own field first: "url: required when ...", or a
        # field further down: "keys.self_service.path: overlaps ...".
        field, sep, rest = message.partition(": ")
        if sep and re.split(r"[.\[]", field, maxsplit=1)[0] in _fields_at(root, loc):
            return f"{join_path(_loc_path(loc) if loc else '', field)}: {rest}"
        return f"{_loc_path(loc)}: {message}"
    bounds = {
        "greater_than": (">", "gt"),
        "greater_than_equal": (">=", "ge"),
        "less_than": ("<", "lt"),
        "less_than_equal": ("<=", "le"),
    }
    if kind in bounds:
        op, key = bounds[kind]
        return f"{_loc_path(loc)}: must be {op} {ctx[key]} (got {shown(got)})"
    if kind == "literal_error":
        return f"{_loc_path(loc)}: must be one of {ctx['expected']} (got {shown(got)})"
    simple = {
        "int_type": "must be a whole number",
        "int_parsing": "must be a whole number",
        "int_from_float": "must be a whole number",
        "int_parsing_size": "must be a whole number",
        "finite_number": "must be a finite number",
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
        return f"{_loc_path(loc)}: {simple[kind]} (got {shown(got)})"
    message = str(err["msg"])
    return f"{_loc_path(loc)}: {message[:1].lower()}{message[1:]} (got {shown(got)})"


def _fields_at(root: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """Field names of the model found by following loc from the root, for 'did you mean'."""
    annotation: Any = root
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
