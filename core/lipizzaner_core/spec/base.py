"""The base of every spec section: camelCase on the wire, strict, no unknown fields."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class SpecModel(BaseModel):
    """Base for every spec section: camelCase aliases, no unknown fields."""

    # Strict, as the CRD's schema is: "3" is not an integer, "yes" is not a boolean.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, strict=True
    )
