"""Pydantic's validation errors as one line each: the field's path, the reason, the value.

`lipizzaner validate`, the operator's InvalidSpec status and `lipizzaner submit` all say a
manifest's problems this way; an unknown field also gets the closest known name.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Sequence
from typing import Any

from pydantic import BaseModel


class SpecError(ValueError):
    """A run manifest that does not validate; `errors` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


_MESSAGES = {
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "extra_forbidden": "unknown field",
    "missing": "required field is missing",
    "literal_error": "must be {expected}",
    "union_tag_invalid": "must be one of {expected_tags}",
    "string_pattern_mismatch": "must match {pattern}",
    "too_short": "must have at least {min_length} item(s)",
    "int_type": "must be an integer",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
}


def describe_errors(
    errors: Sequence[Any], model: type[BaseModel], union_tags: Collection[str]
) -> list[str]:
    """Each error of validating `model`; `union_tags` (a tagged union's values, which
    pydantic puts in the path) are left out of the paths."""
    names = sorted(_field_names(model, set()))
    return [_describe(error, names, union_tags) for error in errors]


def _describe(error: Any, names: list[str], union_tags: Collection[str]) -> str:
    """One pydantic error as `path: reason, got value`."""
    loc = [str(part) for part in error["loc"] if part not in union_tags]
    path = ".".join(loc)
    context = error.get("ctx", {})
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        # The tag is the discriminator field itself: say so, and what was given.
        field = context.get("discriminator", "'name'").strip("'")
        given = context.get("tag")
        got = f", got {given!r}" if given is not None else ""
        return f"{path}.{field}: must be one of {context.get('expected_tags')}{got}"
    template = _MESSAGES.get(error["type"])
    if template is not None:
        reason = template.format(**context)
    else:
        reason = error["msg"].removeprefix("Value error, ")
        # Model validators report their own field path first.
        if ": " in reason and " " not in reason.split(": ")[0]:
            inner, reason = reason.split(": ", 1)
            return f"{path}.{inner}: {reason}" if path else f"{inner}: {reason}"
    if error["type"] == "extra_forbidden":
        reason += _suggestion(loc[-1] if loc else "", names)
    value = error.get("input")
    if error["type"] not in ("missing", "extra_forbidden") and not isinstance(value, dict):
        reason += f", got {value!r}"
    return f"{path}: {reason}" if path else reason


def _field_names(model: type[BaseModel], names: set[str]) -> set[str]:
    """Every camelCase field name of a model and of the models inside it."""
    for name, info in model.model_fields.items():
        names.add(info.alias or name)
        for kind in (info.annotation, *getattr(info.annotation, "__args__", ())):
            for inner in (kind, *getattr(kind, "__args__", ())):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    _field_names(inner, names)
    return names


def _suggestion(field: str, names: list[str]) -> str:
    close = difflib.get_close_matches(field, names, n=1)
    return f" (did you mean {close[0]}?)" if close else ""
