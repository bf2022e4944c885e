"""JSON request bodies: a strict model per operation, and a 400 naming every bad field."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from gateway.config.validation import describe_errors
from gateway.errors import BadRequest


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


B = TypeVar("B", bound=Body)


def parse_body(raw: bytes, model: type[B], context: dict[str, Any]) -> B:
    """A JSON object body as model, or 400 naming every problem with its field."""
    try:
        payload = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise BadRequest("The body must be JSON.") from None
    if not isinstance(payload, dict):
        raise BadRequest("The body must be a JSON object.")
    try:
        return model.model_validate(payload, context=context)
    except ValidationError as exc:
        raise BadRequest("; ".join(describe_errors(exc, model))) from None
