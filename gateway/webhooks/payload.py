"""The delivery body: our envelope, or the shape an existing API's receivers already expect."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.api.views import iso
from gateway.config import WebhooksConfig


def _iso_offset(at: float) -> str:
    # Whole seconds and "+00:00": what Python's datetime.isoformat() gives, and so what many
    # existing APIs document.
    return datetime.fromtimestamp(int(at), UTC).isoformat()


def _unix(at: float) -> int:
    return int(at)


_TIMESTAMPS: dict[str, Callable[[float], Any]] = {
    "iso": iso,
    "iso_offset": _iso_offset,
    "unix": _unix,
}


class PayloadShape:
    """webhooks.payload and webhooks.event_aliases, read once; ``body`` makes an event's bytes.

    The body is made once, when the event is accepted, and stored with every delivery of it:
    each attempt, and each retry after a restart with another config, sends the same bytes.
    """

    def __init__(self, config: WebhooksConfig) -> None:
        payload = config.payload
        self._aliases = dict(config.event_aliases)
        self._id = payload.id
        self._type = payload.type
        self._lift = payload.lift
        self._timestamp = payload.timestamp
        self._format = _TIMESTAMPS[payload.timestamp_format]
        self._data = payload.data

    def type_name(self, event_type: str) -> str:
        """The event's type as the body names it: the alias of one of the gateway's own."""
        return self._aliases.get(event_type, event_type)

    def body(self, event_id: str, event_type: str, at: float, data: Any) -> bytes:
        """Fields in the order id, type, lifted fields, timestamp, data (a left-out one skipped).

        A lifted field moves: it leaves data, so the receiver does not find it twice.
        """
        body: dict[str, Any] = {}
        if self._id is not None:
            body[self._id] = event_id
        body[self._type] = self.type_name(event_type)
        if self._lift and isinstance(data, dict):
            data = dict(data)
            for name in self._lift:
                if name in data:
                    body[name] = data.pop(name)
        if self._timestamp is not None:
            body[self._timestamp] = self._format(at)
        body[self._data] = data
        return orjson.dumps(body)
