"""Shared base for every config section.

Every section is a pydantic model that forbids unknown keys and validates on assignment, so a typo in a TOML file
or a `--set` override is an error that names the key, never a silently ignored option (kohya's flat TOML accepts
anything; we do not).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ..errors import ConfigError  # noqa: F401  (re-exported: config.ConfigError)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=False)




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
