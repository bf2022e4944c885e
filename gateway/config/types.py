"""Scalar types for gateway.yaml: bounded durations, sizes and numbers, times, network ranges.

Every number a config can hold is finite and bounded: NaN, infinity and absurd magnitudes are
refused with the field's name, so that no timer, pool or counter is ever built from them.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    WithJsonSchema,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from gateway.config.validation import shown

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
WEEK = 7 * DAY
YEAR = 365 * DAY

KIB = 1024
MIB = 1024**2
GIB = 1024**3

# One spelling for the parser and the JSON Schema (ECMA-262 regexes: no inline flags, ASCII).
DURATION_PATTERN = r"^\s*([0-9]+(\.[0-9]+)?)\s*(ms|s|m|h|d)\s*$"
SIZE_PATTERN = r"^\s*([0-9]+)\s*([bB]|[kKmMgG][iI]?[bB])?\s*$"
_DURATION = re.compile(DURATION_PATTERN, re.ASCII)
_SIZE = re.compile(SIZE_PATTERN, re.ASCII)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": MINUTE, "h": HOUR, "d": DAY}
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "kib": KIB,
    "mb": 1000**2,
    "mib": MIB,
    "gb": 1000**3,
    "gib": GIB,
}
_TIME_UNITS = (("d", DAY), ("h", HOUR), ("m", MINUTE), ("s", 1.0), ("ms", 0.001))
_BYTE_UNITS = (("GiB", GIB), ("MiB", MIB), ("KiB", KIB))


def format_duration(seconds: float) -> str:
    """``86400`` -> ``1d``, ``90`` -> ``1.5m``: the largest unit that keeps it >= 1."""
    for unit, size in _TIME_UNITS:
        if seconds >= size:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def format_size(size: int) -> str:
    """``1048576`` -> ``1MiB``: the largest binary unit that divides it."""
    for unit, factor in _BYTE_UNITS:
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}b"


def _to_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an int beyond a double: as good as infinite
        return math.inf if value > 0 else -math.inf


def parse_duration(value: Any) -> float:
    """Seconds from ``2s``, ``500ms``, ``1m``, ``1h``, ``1d`` or a plain number of seconds.

    Only the form is checked here (and the sign); a number too large for a float reads as
    infinity. Bounds, finiteness included, are the field's: see DurationRange.
    """
    if isinstance(value, bool):
        raise ValueError(f"must be a duration like 2s or 1m (got {value!r})")
    if isinstance(value, int | float):
        seconds = _to_float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(3)]
    else:
        raise ValueError(f"must be a duration like 2s, 500ms or 1m (got {shown(value)})")
    if seconds < 0:
        raise ValueError(f"must not be negative (got {shown(value)})")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from ``10MiB``, ``512kb``, ``1048576``."""
    if isinstance(value, bool):
        raise ValueError(f"must be a size like 10MiB (got {value!r})")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()]
    else:
        raise ValueError(f"must be a size like 10MiB or 512kb (got {shown(value)})")
    if size < 0:
        raise ValueError(f"must not be negative (got {shown(value)})")
    return size


@dataclass(frozen=True, slots=True)
class DurationRange:
    """Annotated metadata of a duration field: finite, within [least, most], > 0 if positive.

    ``Annotated[float, DurationRange(most=DAY, positive=True)]`` reads 2s, 500ms, 1m, 1h, 1d or
    seconds, and shows the same bounds in the JSON Schema.
    """

    most: float = YEAR
    least: float = 0.0
    positive: bool = False

    def check(self, value: Any) -> float:
        seconds = parse_duration(value)
        if math.isnan(seconds) or (isinstance(value, float) and math.isinf(value)):
            raise ValueError(f"must be a finite duration (got {shown(value)})")
        if seconds > self.most:
            raise ValueError(f"must be at most {format_duration(self.most)} (got {shown(value)})")
        if self.positive and seconds <= 0:
            raise ValueError(f"must be > 0 (got {seconds:g}s)")
        if seconds < self.least:
            raise ValueError(f"must be at least {format_duration(self.least)} (got {shown(value)})")
        return seconds

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(self.check)

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        number: dict[str, Any] = {"type": "number", "maximum": self.most}
        if self.positive and self.least <= 0:
            number["exclusiveMinimum"] = 0
        else:
            number["minimum"] = self.least
        low = "over 0s" if "exclusiveMinimum" in number else f"from {format_duration(self.least)}"
        return {
            "anyOf": [{"type": "string", "pattern": DURATION_PATTERN}, number],
            "description": f"A duration {low}, at most {format_duration(self.most)}:"
            " 500ms, 2s, 1m, 1h, 1d, or a number of seconds.",
        }


@dataclass(frozen=True, slots=True)
class SizeRange:
    """Annotated metadata of a size field: a whole number of bytes within [least, most]."""

    most: int
    least: int = 0

    def check(self, value: Any) -> int:
        size = parse_size(value)
        if size > self.most:
            raise ValueError(f"must be at most {format_size(self.most)} (got {shown(value)})")
        if size < self.least:
            raise ValueError(f"must be at least {format_size(self.least)} (got {shown(value)})")
        return size

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(self.check)

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "anyOf": [
                {"type": "string", "pattern": SIZE_PATTERN},
                {"type": "integer", "minimum": self.least, "maximum": self.most},
            ],
            "description": f"A size from {format_size(self.least)}, at most"
            f" {format_size(self.most)}: 1048576 (bytes), 512kb, 10MiB.",
        }


@dataclass(frozen=True, slots=True)
class NumberRange:
    """Annotated metadata of a fractional number: finite, within [least, most]."""

    least: float
    most: float

    def check(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"must be a number (got {shown(value)})")
        if isinstance(value, str):  # from ${VAR} interpolation
            try:
                number = float(value.strip())
            except ValueError:
                raise ValueError(f"must be a number (got {shown(value)})") from None
        else:
            number = _to_float(value)
        if not math.isfinite(number) and not isinstance(value, int):
            raise ValueError(f"must be a finite number (got {shown(value)})")
        if not self.least <= number <= self.most:
            raise ValueError(
                f"must be between {self.least:g} and {self.most:g} (got {shown(value)})"
            )
        return number

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(self.check)

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "number", "minimum": self.least, "maximum": self.most}


def parse_network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise ValueError(f"must be an IP address or CIDR like 10.0.0.0/8 (got {shown(value)})")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(
            f"must be an IP address or CIDR like 10.0.0.0/8 (got {shown(value)})"
        ) from None


# The shapes most fields take; a field with bounds of its own spells out its DurationRange.
Duration = Annotated[float, DurationRange()]  # 0 to 365d
Timeout = Annotated[float, DurationRange(most=DAY, positive=True)]  # over 0, at most 1d
Interval = Annotated[float, DurationRange(least=0.01, most=DAY)]  # 10ms (no busy loop) to 1d
ByteSize = Annotated[int, SizeRange(most=1024 * GIB)]  # 0 to 1TiB

Network = Annotated[
    ipaddress.IPv4Network | ipaddress.IPv6Network,
    BeforeValidator(parse_network),
    WithJsonSchema({"type": "string", "description": "An IP address or CIDR range."}),
]


def _utc(value: Any) -> Any:
    """YAML reads 2026-01-01 as a date: midnight UTC. A datetime without a zone is UTC."""
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return value


UtcDateTime = Annotated[
    datetime,
    BeforeValidator(_utc),
    AfterValidator(_utc),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "format": "date"},
                {"type": "string", "format": "date-time"},
            ],
            "description": "A date (midnight UTC) or an RFC 3339 time (UTC if it has no zone).",
        }
    ),
]


# Scopes are checked where they are configured and where the admin API takes them.
SCOPE = re.compile(r"^(?:\*|[A-Za-z0-9_.-]+(?::(?:[A-Za-z0-9_.-]+|\*))*)$")


# A name in a JSON answer or a delivery body that config chooses: plain for any client's binding.
FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# An HTTP field name (RFC 9110 token), as config may name one.
HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}")

# An org's slug: it names the org in URLs beside its id, and never holds "_" as every id does.
_SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")  # fullmatch: "acme\n" is no slug


def check_slug(value: str) -> str:
    if not isinstance(value, str) or not _SLUG.fullmatch(value):
        raise ValueError(
            f"must be 1-63 lower-case letters, digits or '-', not at the ends (got {value!r})"
        )
    return value


def is_org_id(ref: str) -> bool:
    """Whether an org reference (an id or a slug) is an id: ids hold "_", slugs never do."""
    return "_" in ref


def check_scope(scope: str) -> str:
    # fullmatch: "$" alone would let "read\n" through, into the X-Scopes header.
    if not isinstance(scope, str) or not SCOPE.fullmatch(scope) or len(scope) > 100:
        raise ValueError(
            f"not a scope: {scope!r} (use names like read, contacts:read or contacts:*)"
        )
    return scope
