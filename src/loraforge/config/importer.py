"""`loraforge import`: a kohya, diffusers or cloneofsimo training command (or kohya's `--config_file` TOML) as a
loraforge config.

Pure: text in, an `ImportResult` out (the config data, its TOML, and the report of what was mapped, what was not and
why, and where the meaning differs); the CLI reads and writes the files. Every flag goes through the alias table
(`aliases.py`), the same one the config error messages use. The scripts' defaults that differ from loraforge's are
written too, so the config trains as the command did. The result is validated: a value loraforge refuses is moved
to the unmapped list with the reason, so the config written always loads.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .aliases import ACCELERATE, DIFFUSERS, KOHYA
from .script_defaults import DIFFUSERS_SCRIPTS, KOHYA_SCRIPTS
from .aliases_cloneofsimo import CLONEOFSIMO, CLONEOFSIMO_SCRIPTS
from .command_line import Command, Flag, parse_command
from .import_cloneofsimo import HANDLERS as CLONEOFSIMO_HANDLERS
from .import_cloneofsimo import cloneofsimo_rules, fire_flags
from .import_flux import flux_rules
from .import_rules import diffusers_rules, kohya_rules, translate_flag
from .import_translation import Mapped, Translation, Unmapped, short
from .load import validate_config
from .root import SECTIONS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KOHYA_TOML = "kohya --config_file TOML"


@dataclass
class ImportResult:
    source: str
    tool: str  # kohya | diffusers | cloneofsimo
    script: str
    data: dict[str, dict[str, Any]]
    mapped: list[Mapped]
    unmapped: list[Unmapped]
    differences: list[str]
    notes: list[str]

    def toml(self) -> str:
        import tomli_w

        head = [f"# Imported by `loraforge import` from {self.source} ({self.script}, {self.tool})."]
        head += [f"# not mapped: {u.flag}: {u.reason}" for u in self.unmapped]
        head += [f"# differs: {d}" for d in self.differences]
        head += [f"# note: {n}" for n in self.notes]
        return "\n".join(head) + "\n\n" + tomli_w.dumps(self.data)

    def report_lines(self) -> list[str]:
        lines = [f"{self.source}: {self.script} ({self.tool})"]
        explicit = [m for m in self.mapped if not m.default]
        defaults = [m for m in self.mapped if m.default]
        lines.append(f"mapped ({len(explicit)}):")
        lines += [f"  {short(m.flag)} → {m.key} = {_show(m.value)}" for m in explicit]
        if defaults:
            lines.append(f"defaults of {self.script} written, they differ from loraforge's ({len(defaults)}):")
            lines += [f"  {short(m.flag)} → {m.key} = {_show(m.value)}" for m in defaults]
        lines.append(f"not mapped ({len(self.unmapped)}):")
        lines += [f"  {short(u.flag)}: {u.reason}" for u in self.unmapped]
        lines.append(f"meaning differs ({len(self.differences)}):")
        lines += [f"  {d}" for d in self.differences]
        if self.notes:
            lines.append("notes:")
            lines += [f"  {n}" for n in self.notes]
        return lines


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, float) else repr(value)


# ------------------------------------------------------------------------------------------------------- entry
def import_text(text: str, source: str = "<stdin>", base_dir: Path | None = None) -> ImportResult:
    """Translate a pasted command line (or a kohya --config_file TOML); ConfigError when it is neither."""
    if not text.strip():
        raise ConfigError(f"{source}: empty; paste a kohya, diffusers or cloneofsimo (lora_pti) training command, or a "
                          "kohya --config_file TOML")
    toml = _as_toml(text)
    if toml is not None:
        if "datasets" in toml or "general" in toml:
            raise ConfigError(
                f"{source} is a kohya dataset config ([general] / [[datasets]]): loraforge reads it as it is; set "
                f"dataset.config_file = {source!r} (or --set dataset.config_file={source})"
            )
        flags = _toml_flags(toml, "")
        return _translate(KOHYA, KOHYA_TOML, flags, source, "auto", Command(KOHYA_TOML, flags))
    try:
        command = parse_command(text, set(_SCRIPTS))
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    tool, family = _SCRIPTS[command.script]
    flags = fire_flags(command.flags) if tool == CLONEOFSIMO else command.flags
    config_file = next((f for f in flags if f.name == "config_file"), None) if tool == KOHYA else None
    extra: list[Unmapped] = []
    if config_file is not None:
        flags = [f for f in flags if f is not config_file]
        path = Path(str(config_file.value)).expanduser()
        path = path if path.is_absolute() or base_dir is None else base_dir / path
        try:
            from_file = _toml_flags(tomllib.loads(path.read_text(encoding="utf-8")), f"{path.name}: ")
        except (OSError, tomllib.TOMLDecodeError) as e:
            extra.append(Unmapped(config_file.text, f"cannot read it ({e}); import it on its own: loraforge import "
                                                    f"{config_file.value}"))
        else:
            on_line = {f.name for f in flags}
            flags = [f for f in from_file if f.name not in on_line] + flags
    result = _translate(tool, command.script, flags, source, family, command)
    result.unmapped[:0] = extra
    return result


def _as_toml(text: str) -> dict | None:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None
    return data or None


def _toml_flags(data: dict, prefix: str) -> list[Flag]:
    """kohya's --config_file: sections are flattened; false, "" and unset mean the flag is not given."""
    flags = []
    for key, value in data.items():
        for name, v in (value.items() if isinstance(value, dict) else [(key, value)]):
            if v is False or v == "" or isinstance(v, dict):
                continue
            flags.append(Flag(name, v, f"{prefix}{name} = {json.dumps(v)}"))
    return flags


_SCRIPTS = {script: (tool, family) for tool, scripts in ((KOHYA, KOHYA_SCRIPTS), (DIFFUSERS, DIFFUSERS_SCRIPTS),
                                                           (CLONEOFSIMO, CLONEOFSIMO_SCRIPTS))
            for script, family in scripts.items()}  # script -> (tool, model.family)
_NOTE_WHEN_ABSENT = {KOHYA: ("seed", "mixed_precision", "save_precision"), DIFFUSERS: ("seed", "mixed_precision"),
                     CLONEOFSIMO: ()}  # cloneofsimo_rules says it per script
_FIRST = ("network_module", "optimizer_type", "optimizer", "use_8bit_adam")


def _translate(tool: str, script: str, flags: list[Flag], source: str, family: str, command: Command) -> ImportResult:
    t = Translation(tool, script, flags)
    handlers = CLONEOFSIMO_HANDLERS if tool == CLONEOFSIMO else None
    for f in sorted(flags, key=lambda f: f.name not in _FIRST):
        translate_flag(t, f, handlers)
    if family != "auto" and t.value("model.family") is None:
        t.set("model.family", family, f"{script} (the script trains {family})")
    if tool == KOHYA:
        kohya_rules(t, t.value("model.family") or family)
    elif tool == CLONEOFSIMO:
        cloneofsimo_rules(t)
    else:
        diffusers_rules(t)
    if tool != CLONEOFSIMO:
        flux_rules(t, t.value("model.family") or family)
    _launcher(t, command)
    if tool == KOHYA and script == KOHYA_TOML and t.value("model.family") is None:
        t.notes.append("the TOML does not say which script it is for: model.family = 'auto' detects it from the "
                       "model (set it to 'sdxl' for sdxl_train_network.py)")
    for name in _NOTE_WHEN_ABSENT[tool]:
        alias = t.alias(name)
        if name not in t.given and t.value(alias.key) is None:
            t.differ(f"--{name} (not given)", alias.note)
    _validate(t, source)
    order = list(SECTIONS)
    data = {s: _ordered(s, t.data[s]) for s in sorted(t.data, key=order.index)}
    mapped = sorted(t.mapped.values(), key=lambda m: (order.index(m.key.split(".")[0]), m.key))
    return ImportResult(source, tool, script, data, mapped, t.unmapped, t.differences, t.notes)


def _ordered(section: str, values: dict) -> dict:
    fields = list(SECTIONS[section].model_fields)
    return {k: values[k] for k in sorted(values, key=fields.index)}


def _launcher(t: Translation, command: Command) -> None:
    for f in command.launcher_flags:
        alias = t.alias(f.name, ACCELERATE) if command.launcher == "accelerate launch" else None
        if alias is not None and alias.key and "mixed_precision" not in t.given:
            t.apply(alias, f.value, f"accelerate launch {f.text}")
        elif alias is not None and alias.key:
            t.skip(f"accelerate launch {f.text}", "the script's own --mixed_precision wins")
        else:
            t.skip(f"{command.launcher} {f.text}", "an option of the launcher: run `accelerate launch [its options] -m "
                                                   "loraforge train CONFIG.toml` (README, Several GPUs)")
    for assignment in command.environment:
        t.notes.append(f"{assignment}: an environment variable of the command; set it when you run loraforge too")
    for word in command.positional:
        t.skip(word, "a positional argument; the script takes none")
    for name in command.undefined:
        t.notes.append(f"${name} is not defined in the pasted text: its value was kept as written; edit the config")


def _validate(t: Translation, source: str) -> None:
    """Drop what loraforge refuses, one key at a time (the first key an error names), until the config loads."""
    for _ in range(len(t.mapped) + 1):
        try:
            validate_config(t.data, source)
            return
        except ConfigError as e:
            problems = e.problems
        prefix = f"{source}: "
        for problem in problems:
            text = problem.removeprefix(prefix)
            named = sorted((text.find(k), k) for k in t.mapped if text.find(k) >= 0)
            if named:
                t.unset(named[0][1], f"refused by loraforge: {text}")
                break
        else:
            raise ConfigError(f"{source}: the imported config does not load (a bug in loraforge import):",
                              [p.removeprefix(prefix) for p in problems])
    raise ConfigError(f"{source}: the imported config does not load (a bug in loraforge import)")
