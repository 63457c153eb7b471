"""The hint for an unknown config key: where the option really is.

In this order:
1. a loraforge key of that name in another section (`learning_rate` in `[training]` → `optimizer.learning_rate`);
2. the name of a kohya, diffusers or cloneofsimo flag (`network_dim` → `network.rank`), from the alias table, with how
   its meaning differs, or why loraforge has no such option;
3. a loraforge key of a similar spelling, in this section first, then in any section.

Step 1 comes before the alias table so that a name both loraforge and a peer use (`train_data_dir`, `output_dir`,
`clip_skip`) points at the loraforge key of that name, which is what the user wrote.
"""

from __future__ import annotations

import difflib

from .aliases import ACCELERATE, DIFFUSERS, KOHYA, NETWORK_ARGS, OPTIMIZER_ARGS, Alias, find, normalise_flag
from .aliases_cloneofsimo import CLONEOFSIMO
from .root import SECTIONS

_TOOLS = (KOHYA, DIFFUSERS, CLONEOFSIMO, NETWORK_ARGS, OPTIMIZER_ARGS)  # not the launcher's options
_OWNERS = {KOHYA: "kohya's", DIFFUSERS: "diffusers'", CLONEOFSIMO: "cloneofsimo's"}


def _all_keys() -> dict[str, list[str]]:
    """key name -> the sections that have it."""
    out: dict[str, list[str]] = {}
    for section, model in SECTIONS.items():
        for key in model.model_fields:
            out.setdefault(key, []).append(section)
    return out


def _where(section: str | None, target: str, options: list[str] | None = None) -> str:
    """'did you mean 'rank'?' for a key of this section (or of this table inside it, e.g. a subset), else 'it lives
    in [optimizer]: optimizer.learning_rate'."""
    tsection, _, tkey = target.partition(".")
    inside = section is not None and section.split(".")[0] == tsection and tkey in (options or [])
    if section == tsection or inside:
        return f"did you mean '{tkey}'?"
    return f"it lives in [{tsection}]: {target}"


def _who(alias: Alias, name: str) -> str:
    if alias.tools[0] == NETWORK_ARGS:
        return f"kohya's --network_args {name}="
    if alias.tools[0] == OPTIMIZER_ARGS:
        return f"kohya's --optimizer_args {name}="
    owners = [_OWNERS[t] for t in alias.tools if t != ACCELERATE]
    return f"{' and '.join(owners)} --{name}"


def key_hint(key: str, section: str | None, options: list[str] | None = None) -> str | None:
    """Where the unknown `key`, written in `section` (dotted, e.g. 'network' or 'dataset.subsets.0'; None at the top
    level) whose valid keys are `options`, really is; None when nothing fits."""
    name = normalise_flag(key)
    homes = [s for s in _all_keys().get(name, []) if s != section]
    if homes:
        return _where(section, f"{homes[0]}.{name}") + "".join(f" (or {h}.{name})" for h in homes[1:])
    aliases = find(name, _TOOLS)
    if aliases:
        alias = next((a for a in aliases if a.key), aliases[0])
        who = _who(alias, name)
        if alias.kind == "expands":
            return f"{who} holds other options: write each key=value as its own key (docs/import.md maps them)"
        if alias.key is None:
            lead = "needs no option in loraforge" if alias.kind == "builtin" else "has no loraforge equivalent"
            return f"{who} {lead}: {alias.note}"
        note = f"; {alias.note}" if alias.note else ""
        return f"{_where(section, alias.key, options)} ({who}{note})"
    close = difflib.get_close_matches(name, options or [], n=1, cutoff=0.5)
    if close:
        return f"did you mean '{close[0]}'?"
    everywhere = [f"{s}.{k}" for k, sections in _all_keys().items() for s in sections]
    close = difflib.get_close_matches(name, [k.split(".")[1] for k in everywhere], n=1, cutoff=0.75)
    if close:
        target = next(k for k in everywhere if k.endswith("." + close[0]))
        return _where(section, target, options)
    return None
