"""The state of one `loraforge import` translation: the config data being built, what was mapped (and from which
flag), what was not and why, where the meaning differs; and the conversion of a flag's value to a key's type."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any

from .aliases import KOHYA, Alias, find
from .command_line import Flag
from .root import SECTIONS

TRUE_WORDS, FALSE_WORDS = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


class Unmappable(Exception):
    """A flag (or value) loraforge cannot take; the message says why."""


@dataclass
class Mapped:
    flag: str  # as written, e.g. `--network_dim=8`
    key: str  # section.key
    value: Any
    default: bool = False  # the script's default, written because it differs from loraforge's


@dataclass
class Unmapped:
    flag: str
    reason: str


def short(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


# ------------------------------------------------------------------------------------------------------- values
def coerce(key: str, value: Any) -> Any:
    """A flag's value (a string, True for a bare flag, a list, or a TOML value) as the type of loraforge's `key`."""
    section, _, name = key.partition(".")
    ann = SECTIONS[section].model_fields[name].annotation
    if typing.get_origin(ann) in (typing.Union, types.UnionType):  # a list for a list, else the first type
        kinds = [a for a in typing.get_args(ann) if a is not type(None)]
        lists = [a for a in kinds if typing.get_origin(a) is list]
        ann = lists[0] if isinstance(value, list) and lists else kinds[0]
    if typing.get_origin(ann) is list:
        inner = typing.get_args(ann)[0]
        items = value if isinstance(value, list) else [p for p in str(value).split(",") if p.strip()]
        return [scalar(inner, v) for v in items]
    if isinstance(value, list):
        raise Unmappable(f"{key} takes one value, not {len(value)}")
    return scalar(ann, value)


def scalar(kind: Any, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in TRUE_WORDS | FALSE_WORDS:
            return text in TRUE_WORDS
        raise Unmappable(f"{value!r} is not true or false")
    if value is True:
        raise Unmappable("given without a value")
    if kind is int:
        try:
            number = float(value)
        except ValueError:
            raise Unmappable(f"{value!r} is not a whole number") from None
        if not number.is_integer():
            raise Unmappable(f"{value!r} is not a whole number")
        return int(number)
    if kind is float:
        try:
            return float(value)
        except ValueError:
            raise Unmappable(f"{value!r} is not a number") from None
    return str(value)


def items(value: Any) -> list[str]:
    """`--network_args a=1 b=2` / TOML `["a=1", "b=2"]` -> ["a=1", "b=2"]."""
    if value is True:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


# ------------------------------------------------------------------------------------------------------- translation
class Translation:
    def __init__(self, tool: str, script: str, flags: list[Flag]):
        self.tool, self.script = tool, script
        self.given = {f.name: f for f in flags}
        self.data: dict[str, dict[str, Any]] = {}
        self.mapped: dict[str, Mapped] = {}
        self.unmapped: list[Unmapped] = []
        self.differences: list[str] = []
        self.notes: list[str] = []
        self.network_args: dict[str, tuple[str, str]] = {}  # key -> (value, text)
        self.optimizer_args: dict[str, tuple[str, str]] = {}
        self.network_module: str | None = None
        self.warmup_ratio: tuple[float, str] | None = None  # kohya's --lr_warmup_steps=0.1
        self.checkpoints_limit: tuple[int, str] | None = None  # diffusers' --checkpoints_total_limit

    # ---- recording
    def set(self, key: str, value: Any, text: str, default: bool = False) -> None:
        value = coerce(key, value)
        section, _, name = key.partition(".")
        old = self.mapped.get(key)
        if old is not None and old.flag != text and not old.default and not default:
            self.unmapped.append(Unmapped(old.flag, f"replaced by {text}"))
        self.data.setdefault(section, {})[name] = value
        self.mapped[key] = Mapped(text, key, value, default)

    def set_entry(self, key: str, entry: str, value: Any, text: str) -> None:
        """One entry of a table key (`optimizer.optimizer_args`), mapped as `key.entry`."""
        section, _, name = key.partition(".")
        self.data.setdefault(section, {}).setdefault(name, {})[entry] = value
        self.mapped[f"{key}.{entry}"] = Mapped(text, f"{key}.{entry}", value)

    def unset(self, key: str, reason: str) -> None:
        old = self.mapped.pop(key, None)
        section, _, name = key.partition(".")
        self.data.get(section, {}).pop(name, None)
        if self.data.get(section) == {}:
            del self.data[section]
        if old is not None:
            self.unmapped.append(Unmapped(old.flag, reason))

    def skip(self, text: str, reason: str) -> None:
        self.unmapped.append(Unmapped(text, reason))

    def differ(self, text: str, note: str) -> None:
        line = f"{short(text, 60)}: {note}"
        if line not in self.differences:
            self.differences.append(line)

    def value(self, key: str) -> Any:
        section, _, name = key.partition(".")
        return self.data.get(section, {}).get(name)

    # ---- one flag
    def alias(self, name: str, tool: str | None = None) -> Alias | None:
        found = find(name, (tool or self.tool,))
        return found[0] if found else None

    def apply(self, alias: Alias, value: Any, text: str, default: bool = False) -> None:
        if alias.key is None:
            lead = "not needed" if alias.kind == "builtin" else "no equivalent"
            self.skip(text, f"{lead}: {alias.note}")
            return
        try:
            self.set(alias.key, value, text, default)
        except Unmappable as e:
            self.skip(text, str(e))
            return
        if alias.kind == "differs" and alias.note:
            self.differ(text, alias.note)

    def default(self, name: str, value: Any, why: str = "") -> None:
        """Write the script's default for an absent flag."""
        alias = self.alias(name)
        if alias is not None and name not in self.given:
            who = "kohya" if self.tool == KOHYA else self.script
            self.apply(alias, value, f"--{name}={value} ({who}'s default{why})", default=True)
