"""Read a TOML config plus `--set section.key=value` overrides into a validated `TrainConfig`.

Errors are collected and reported together, each naming the file (or the override), the section, the key and the
fix: the closest valid key for a typo, the allowed range or values for a bad value.
"""

from __future__ import annotations

import difflib
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .base import ConfigError, describe_field
from .network import NETWORK_CLASSES, every_option
from .presets import apply_preset
from .root import SECTIONS, TrainConfig
from .suggest import key_hint

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def parse_override(text: str) -> tuple[list[str], Any]:
    """`training.max_train_steps=200` -> (["training", "max_train_steps"], 200). Values are TOML values; a bare
    word that is not valid TOML is taken as a string, so `--set model.family=sdxl` needs no quotes."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. --set training.max_train_steps=200")
    key, _, raw = text.partition("=")
    path = [p for p in key.strip().split(".") if p]
    if len(path) < 2 and path != ["preset"]:
        hint = key_hint(path[0], None) if path else None
        raise ConfigError(f"--set {text!r}: the key needs its section" +
                          (f"; {hint}" if hint else ", e.g. network.rank=16 rather than rank=16"))
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return path, value


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None


def _describe(model: type[BaseModel], name: str) -> str:
    """What a field accepts, e.g. 'int (>= 1), or unset' or "one of 'no', 'fp16', 'bf16'"."""
    field = model.model_fields.get(name)
    return describe_field(field) if field is not None else ""


def _plain_loc(loc: tuple) -> tuple:
    """An error's location without the tag pydantic puts after `network` (the algo whose class validated it)."""
    if len(loc) > 1 and loc[0] == "network" and loc[1] in NETWORK_CLASSES:
        return (loc[0], *loc[2:])
    return tuple(loc)


def _section_model(loc: tuple) -> tuple[type[BaseModel], str | None]:
    model: type[BaseModel] = TrainConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if model is TrainConfig and part in SECTIONS:
            model = SECTIONS[part]
            continue
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if typing.get_origin(ann) is list:  # a list of tables, e.g. [[dataset.subsets]]
            ann = typing.get_args(ann)[0]
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            break
    return model, (str(loc[-1]) if loc else None)


def format_validation_error(err: ValidationError, source: str, overridden: set[tuple[str, ...]]) -> list[str]:
    problems = []
    for e in err.errors():
        e["loc"] = _plain_loc(e["loc"])
        loc = tuple(str(p) for p in e["loc"])
        where = source
        if tuple(loc[:2]) in overridden:
            where = f"--set {'.'.join(loc[:2])}"
        if e["type"] == "network_algo" and isinstance(e.get("input"), dict):  # no class for the algo written
            if ("network", "algo") in overridden:
                where = "--set network.algo"
            problems.append(f"{where}: network.algo = {e['input'].get('algo')!r}: {e['msg']}")
            continue
        if e["type"] == "extra_forbidden":
            if len(loc) == 1 and loc[0] not in SECTIONS and isinstance(e.get("input"), dict):
                options = list(SECTIONS)
                close = difflib.get_close_matches(loc[0], options, n=1, cutoff=0.5)
                hint = f"did you mean [{close[0]}]?" if close else f"sections are: {', '.join(options)}"
                problems.append(f"{where}: unknown section [{loc[0]}]; {hint}")
            elif len(loc) == 1:  # a plain value outside any section
                hint = key_hint(loc[0], None) or f"options go in a section: {', '.join(SECTIONS)}"
                problems.append(f"{where}: unknown top-level key '{loc[0]}'; {hint}")
            else:
                model, key = _section_model(e["loc"])
                section = ".".join(loc[:-1])
                hint = key_hint(key or "", section, list(model.model_fields)) or "see docs/config.md for the keys"
                problems.append(f"{where}: unknown key '{key}' in [{section}]; {hint}")
            continue
        if len(loc) == 1 and loc[0] in SECTIONS and not isinstance(e.get("input"), dict):
            problems.append(f"{where}: {loc[0]} = {e.get('input')!r}: [{loc[0]}] is a section (a TOML table), not a "
                            f"value; write its options under a [{loc[0]}] line, e.g. [network] then rank = 16")
            continue
        if not loc:  # a model-level validator
            msg = e["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {msg}")
            continue
        model, key = _section_model(e["loc"])
        value = e.get("input")
        accepted = _describe(model, key) if key and not isinstance(value, dict) else ""
        shown = f" = {value!r}" if not isinstance(value, dict) else ""
        msg = e["msg"].removeprefix("Value error, ")
        name = ".".join(loc)
        problems.append(f"{where}: {name}{shown}: {msg}" + (f" (accepted: {accepted})" if accepted else ""))
    return problems


def set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {'.'.join(path)}: '{part}' is a value, not a section")
        node = nxt
    node[path[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Load, override and validate. Raises `ConfigError` with every problem found."""
    data: dict[str, Any] = _read_toml(Path(path)) if path is not None else {}
    source = str(path) if path is not None else "config"
    overridden: set[tuple[str, ...]] = set()
    for text in overrides or []:
        keys, value = parse_override(text)
        set_path(data, keys, value)
        overridden.add(tuple(keys[:2]))
    return validate_config(data, source, overridden)


def validate_config(data: dict[str, Any], source: str = "config", overridden: set | None = None) -> TrainConfig:
    try:
        data = apply_preset(data)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        problems = format_validation_error(err, source, overridden or set())
        raise ConfigError("\n".join(problems), problems) from None


def dump_config(cfg: TrainConfig) -> str:
    """The resolved config as TOML (None values are left out: TOML has no null)."""
    import tomli_w

    data = cfg.model_dump(mode="json", exclude_none=True)
    data["network"] = every_option(cfg.network)
    return tomli_w.dumps(data)
