"""Read a training command as users paste it: `accelerate launch [its options] script.py --flag=value ...`.

Handles `\\` (bash), `^` (cmd.exe) and `` ` `` (PowerShell) line continuations, quotes (shlex), `# comments`,
`export NAME=value` / `NAME=value` lines and `$NAME` / `${NAME}` in later lines, a leading `!` (notebooks), several
commands separated by newlines, `;` or `&&` (the one that runs a known script is taken), and `python` / `torchrun` /
`accelerate launch` in front. The script is a `.py` file or a command of `scripts` (cloneofsimo's `lora_pti`). The
result is the script name and its flags in order, values as strings (no value: True; several values: a list), plus
the launcher's options.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import PurePath

from ..errors import ConfigError

@dataclass
class Flag:
    name: str  # without dashes: `network_dim`
    value: object  # True (given without a value), a string, or a list of strings
    text: str  # as written, for the report

    @staticmethod
    def make(name: str, values: list[str]) -> "Flag":
        value: object = True if not values else values[0] if len(values) == 1 else list(values)
        shown = f"--{name}" + ("" if value is True else "=" + " ".join(values))
        return Flag(name, value, shown)


@dataclass
class Command:
    script: str  # the script's file name, e.g. `sdxl_train_network.py`
    flags: list[Flag]
    launcher: str = ""  # `accelerate launch`, `torchrun`, `python` or ""
    launcher_flags: list[Flag] = field(default_factory=list)
    environment: list[str] = field(default_factory=list)  # `NAME=value` in front of the command
    positional: list[str] = field(default_factory=list)  # stray arguments after the script
    undefined: list[str] = field(default_factory=list)  # `$NAME` never assigned in the text


_CONTINUATION = re.compile(r"(\\|\^|`)[ \t]*\r?\n")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_NUMBER = re.compile(r"^-\.?\d")
_SEPARATORS = {";", "&&", "||", "|"}
_PYTHON_FLAGS = {"m", "u", "B", "O", "X"}  # python's own: `python -u -m accelerate.commands.launch`


def _logical_lines(text: str) -> list[list[str]]:
    """Tokens of each command: continuations joined, comments dropped, a quote may span lines."""
    text = _CONTINUATION.sub(" ", text)
    commands: list[list[str]] = []
    pending = ""
    for line in text.splitlines():
        line = pending + ("\n" if pending else "") + line
        try:
            tokens = shlex.split(line.lstrip().removeprefix("!"), comments=True)
        except ValueError:  # an unclosed quote: the string goes on in the next line
            pending = line
            continue
        pending = ""
        current: list[str] = []
        for tok in tokens:
            if tok in _SEPARATORS:
                commands.append(current)
                current = []
            else:
                current.append(tok)
        commands.append(current)
    if pending:
        raise ConfigError(f"a quote is never closed: {pending.strip()[:80]!r}")
    return [c for c in commands if c]


def _substitute(token: str, variables: dict[str, str], undefined: list[str]) -> str:
    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name in variables:
            return variables[name]
        if name not in undefined:
            undefined.append(name)
        return m.group(0)

    return _VARIABLE.sub(repl, token)


def _split_flags(tokens: list[str], stop=lambda tok: False) -> tuple[list[Flag], list[str], int]:
    """Flags with their values from `tokens` up to the first token for which `stop` is true; returns the flags, the
    stray positional tokens and the index where it stopped."""
    flags: list[Flag] = []
    positional: list[str] = []
    i = 0
    while i < len(tokens) and not stop(tokens[i]):
        tok = tokens[i]
        i += 1
        if not tok.startswith("-") or _NUMBER.match(tok):
            positional.append(tok)
            continue
        name, eq, value = tok.lstrip("-").partition("=")
        name = name.replace("-", "_")
        values = [value] if eq else []
        if not eq:
            while i < len(tokens) and not stop(tokens[i]) and (not tokens[i].startswith("-") or _NUMBER.match(tokens[i])):
                values.append(tokens[i])
                i += 1
        flags.append(Flag.make(name, values))
    return flags, positional, i


def parse_command(text: str, scripts: set[str]) -> Command:
    """The command of `text` that runs one of `scripts` (file names). ConfigError when there is none."""
    variables: dict[str, str] = {}
    undefined: list[str] = []
    seen_scripts: list[str] = []
    for tokens in _logical_lines(text):
        if tokens[0] in ("export", "set") and len(tokens) > 1:
            tokens = tokens[1:]
        if all(_ASSIGNMENT.match(t) for t in tokens):  # NAME=value lines
            for t in tokens:
                name, _, value = t.partition("=")
                variables[name] = _substitute(value, variables, [])
            continue
        tokens = [_substitute(t, variables, undefined) for t in tokens]
        environment = []
        while tokens and _ASSIGNMENT.match(tokens[0]):
            environment.append(tokens.pop(0))
        where = next((i for i, t in enumerate(tokens) if t.endswith(".py") or _file_name(t) in scripts), None)
        if where is None:
            continue
        script = _file_name(tokens[where])
        if script not in scripts:
            seen_scripts.append(script)
            continue
        launcher = _launcher_name(tokens[:where])
        launcher_flags, _, _ = _split_flags(tokens[:where])
        launcher_flags = [f for f in launcher_flags if f.name not in _PYTHON_FLAGS]
        flags, positional, _ = _split_flags(tokens[where + 1:])
        return Command(script, flags, launcher, launcher_flags, environment, positional, undefined)
    known = ", ".join(sorted(scripts))
    if seen_scripts:
        raise ConfigError(
            f"{', '.join(seen_scripts)} is not a training script loraforge can import; it reads commands of: {known}"
        )
    raise ConfigError(
        f"no training command found: expected a command line that runs one of {known} (or a kohya --config_file TOML)"
    )


def _file_name(token: str) -> str:
    """`./scripts/train_network.py` -> `train_network.py`; a command installed on the PATH (`lora_pti`) as it is."""
    return PurePath(token.replace("\\", "/")).name


def _launcher_name(tokens: list[str]) -> str:
    if any("accelerate" in t for t in tokens):
        return "accelerate launch"
    if any("torchrun" in t or "torch.distributed" in t for t in tokens):
        return "torchrun"
    if any(PurePath(t).name.startswith("python") for t in tokens):
        return "python"
    return " ".join(tokens)
