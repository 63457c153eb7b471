"""Shared base for every config section.

Every section is a pydantic model that forbids unknown keys and validates on assignment, so a typo in a TOML file
or a `--set` override is an error that names the key, never a silently ignored option (kohya's flat TOML accepts
anything; we do not).
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from ..errors import ConfigError  # noqa: F401  (re-exported: config.ConfigError)


class Section(BaseModel):
    # allow_inf_nan: TOML has `nan` and `inf`; no option means them (a NaN rate would fail every bound check with a
    # misleading message, an infinite one would pass a lower bound and diverge)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=False,
                              allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _choice_case(cls, value: Any, info: ValidationInfo) -> Any:
        """A choice written in another case is that choice: `type = "AdamW"` is `"adamw"` (the peers' spelling)."""
        if isinstance(value, str) and info.field_name:
            return str_choices(cls).get(info.field_name, {}).get(value.lower(), value)
        return value


@functools.cache
def str_choices(model: type[BaseModel]) -> dict[str, dict[str, str]]:
    """field -> {lower-case choice: choice} for every field whose type is a Literal of strings (or unset)."""
    out = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        if typing.get_origin(ann) in (typing.Union, types.UnionType):
            ann = next((a for a in typing.get_args(ann) if typing.get_origin(a) is typing.Literal), None)
        if typing.get_origin(ann) is typing.Literal:
            out[name] = {c.lower(): c for c in typing.get_args(ann) if isinstance(c, str)}
    return out


def _plain_type(ann) -> str:
    import types
    import typing

    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(ann))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        text = " or ".join(_plain_type(a) for a in args)
        return text + (", or unset" if len(args) < len(typing.get_args(ann)) else "")
    if origin is list:
        return f"a list of {_plain_type(typing.get_args(ann)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        ann, getattr(ann, "__name__", str(ann))
    )


def bounds_text(field, symbols=((">=", "ge"), (">", "gt"), ("<=", "le"), ("<", "lt"))) -> str:
    parts = []
    for meta in field.metadata:
        for sym, attr in symbols:
            v = getattr(meta, attr, None)
            if v is not None:
                parts.append(f"{sym} {v}")
    return " and ".join(parts)


def describe_field(field) -> str:
    """Plain-text description of the values a pydantic field accepts, for error messages."""
    text = _plain_type(field.annotation)
    bounds = bounds_text(field)
    if bounds:
        text = text.replace(", or unset", "") + f" {bounds}" + (", or unset" if ", or unset" in text else "")
    return text
