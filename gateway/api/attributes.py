"""Org and key attributes as the APIs accept them: free-form names and texts, bounded.

A name is a lower-case letter, then up to 63 of a-z, 0-9 and _ (it is a JSON key and a config
key: ``identity.fields`` says ``attributes.<name>``). A value is 1 to 256 characters, none a
control character and neither end a space: values travel as header values
(``identity.attribute_headers``), where a line break would split the header and an outer space
would be trimmed away. At most 32 attributes.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, WithJsonSchema

from gateway.config.keys import ATTRIBUTE_NAME, check_attribute_name
from gateway.config.validation import shown

MAX_ATTRIBUTES = 32
MAX_VALUE_LENGTH = 256
# One pattern for the check and for the JSON Schema: the OpenAPI document is held to it. No C0
# or C1 control character anywhere, no space at either end.
_EDGE = r"[^\u0000-\u0020\u007f-\u009f]"
_INNER = r"[^\u0000-\u001f\u007f-\u009f]"
VALUE_PATTERN = f"^{_EDGE}({_INNER}*{_EDGE})?$"
_VALUE = re.compile(VALUE_PATTERN.removeprefix("^").removesuffix("$"))


def _check(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_ATTRIBUTES:
        raise ValueError(f"at most {MAX_ATTRIBUTES} attributes (got {len(value)})")
    for name, text in value.items():
        check_attribute_name(name)
        if not 1 <= len(text) <= MAX_VALUE_LENGTH:
            raise ValueError(
                f"{name}: must be 1 to {MAX_VALUE_LENGTH} characters (got {len(text)})"
            )
        if not _VALUE.fullmatch(text):
            raise ValueError(
                f"{name}: must hold no control characters and no space at either end"
                f" (got {shown(text)})"
            )
    return value


_SCHEMA: dict[str, Any] = {
    "type": "object",
    "propertyNames": {"pattern": f"^{ATTRIBUTE_NAME.pattern}$"},
    "additionalProperties": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_VALUE_LENGTH,
        "pattern": VALUE_PATTERN,
    },
    "maxProperties": MAX_ATTRIBUTES,
    "description": 'Free-form metadata, e.g. {"role": "sales-manager"}: names of a-z, 0-9'
    " and _ (a letter first, at most 64), values of 1-256 characters without control"
    " characters or outer spaces; at most 32.",
}

Attributes = Annotated[dict[str, str], AfterValidator(_check), WithJsonSchema(_SCHEMA)]
