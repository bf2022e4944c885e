"""ids: the prefixes of the ids the gateway makes (``key_…``, ``org_…``, request ids)."""

from __future__ import annotations

from pydantic import Field, model_validator

from gateway.config.section import Section

# An org is named by its id or its slug; slugs never hold "_", so an id always must.
_KIND_PREFIX = r"^[a-z][a-z0-9]{0,15}_$"


class IdsConfig(Section):
    key: str = Field(
        "key_", pattern=_KIND_PREFIX, description="Prefix of new key ids, e.g. akey_ (ends in _)."
    )
    org: str = Field(
        "org_", pattern=_KIND_PREFIX, description="Prefix of new org ids, e.g. tnt_ (ends in _)."
    )
    request: str = Field(
        "",
        pattern=r"^[A-Za-z0-9._:-]{0,16}$",
        description="Prefix of the request ids the gateway makes, e.g. req_ (a client's own"
        " X-Request-Id is kept as sent).",
    )

    @model_validator(mode="after")
    def _tell_apart(self) -> IdsConfig:
        if self.key == self.org:
            raise ValueError(f"key and org: both {self.key!r}; keys and orgs need their own")
        return self
