"""Scalar types for gateway.yaml: durations, byte sizes and network ranges."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
}


def parse_duration(value: Any) -> float:
    """Seconds from ``2s``, ``500ms``, ``1m``, ``1h``, ``1d`` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"must be a duration like 2s or 1m (got {value!r})")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError(f"must be a duration like 2s, 500ms or 1m (got {value!r})")
    if seconds < 0:
        raise ValueError(f"must not be negative (got {value!r})")
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
        raise ValueError(f"must be a size like 10MiB or 512kb (got {value!r})")
    if size < 0:
        raise ValueError(f"must not be negative (got {value!r})")
    return size


def parse_network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise ValueError(f"must be an IP address or CIDR like 10.0.0.0/8 (got {value!r})")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"must be an IP address or CIDR like 10.0.0.0/8 (got {value!r})") from None


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)\s*$"},
                {"type": "number", "minimum": 0},
            ],
            "description": "A duration: 500ms, 2s, 1m, 1h, 1d, or a number of seconds.",
        }
    ),
]

ByteSize = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"(?i)^\s*\d+\s*(b|kb|kib|mb|mib|gb|gib)?\s*$"},
                {"type": "integer", "minimum": 0},
            ],
            "description": "A size in bytes: 1048576, 512kb, 10MiB.",
        }
    ),
]

Network = Annotated[
    ipaddress.IPv4Network | ipaddress.IPv6Network,
    BeforeValidator(parse_network),
    WithJsonSchema({"type": "string", "description": "An IP address or CIDR range."}),
]
