"""The run form, rendered from the config schema: one field per option, grouped by section as in docs/config.md.

The form's values are `--set section.key=value` lines (values read as TOML, a bare word as a string), so the UI
validates exactly what `loraforge train --set ...` would and shows the CLI's own messages.
"""

from __future__ import annotations

import shlex
import sys

import tomli_w

from ..config import ConfigError, parse_override
from ..config.presets import PRESETS
from ..config.root import SECTIONS, TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Options the UI sets itself (each job has its own run folder; resume is a button) or cannot show as one field.
UI_OWNED = {"output.output_dir", "training.resume"}


def _choices(prop: dict) -> list | None:
    """The allowed values of a choice field (`Literal`, possibly unset); None for a free field."""
    if "enum" in prop:
        return prop["enum"]
    options = prop.get("anyOf", [])
    enums = [o["enum"] for o in options if "enum" in o]
    others = [o for o in options if "enum" not in o and o.get("type") != "null"]
    return enums[0] if len(enums) == 1 and not others else None


def _kind(prop: dict) -> str:
    types = {prop.get("type")} | {o.get("type") for o in prop.get("anyOf", [])}
    if types - {None} == {"boolean"}:
        return "bool"
    if _choices(prop):
        return "choice"
    if prop.get("type") == "array" and prop.get("items", {}).get("$ref"):
        return "table"  # a list of tables ([[dataset.subsets]]): TOML only
    return "text"


def form_schema() -> dict:
    """Sections and fields for the page, from each section's JSON schema (`model_json_schema`)."""
    sections = []
    preset = TrainConfig.model_json_schema()["properties"]["preset"]
    for name, model in SECTIONS.items():
        fields = []
        for key, prop in model.model_json_schema()["properties"].items():
            full = f"{name}.{key}"
            kind = _kind(prop)
            if full in UI_OWNED or kind == "table":
                continue
            fields.append({"key": full, "kind": kind, "choices": _choices(prop),
                           "default": prop.get("default"), "description": prop.get("description", "")})
        sections.append({"name": name, "doc": TrainConfig.model_fields[name].description or "", "fields": fields})
    return {"sections": sections, "presets": list(PRESETS), "preset_description": preset.get("description", "")}


def value_text(value) -> str:
    """A config value as the form (and `--set`) writes it: TOML, a string bare when it reads back as itself."""
    if isinstance(value, str):
        _, parsed = parse_override(f"x.v={value}")
        return value if parsed == value else tomli_w.dumps({"v": value})[4:].strip()
    return tomli_w.dumps({"v": value})[4:].strip()


def toml_to_form(text: str, source: str) -> dict:
    """A TOML config as form values; what the form cannot hold (lists of tables, UI-owned keys) is listed."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    values, left_out = {}, []
    for name, section in data.items():
        if not isinstance(section, dict):
            values[name] = value_text(section)
            continue
        for key, value in section.items():
            full = f"{name}.{key}"
            if full in UI_OWNED or (isinstance(value, list) and value and isinstance(value[0], dict)):
                left_out.append(full)
            else:
                values[full] = value_text(value)
    return {"values": values, "left_out": left_out}


def form_overrides(values: dict[str, str]) -> list[str]:
    """The form's non-empty fields as `--set` lines, in the order given."""
    return [f"{key}={text.strip()}" for key, text in values.items() if text is not None and str(text).strip()]


def cli_line(overrides: list[str]) -> str:
    return " ".join(["loraforge train", *(f"--set {shlex.quote(o)}" for o in overrides)])
