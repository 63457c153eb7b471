"""`docs/import.md`, generated from the flag table in `aliases.py` (`make docs`; a test fails when it is stale)."""

from __future__ import annotations

from pathlib import Path

from .aliases import (
    ACCELERATE,
    ALIASES,
    DIFFUSERS,
    KOHYA,
    NETWORK_ARGS,
    OPTIMIZER_ARGS,
)
from .script_defaults import DIFFUSERS_DEFAULTS, KOHYA_DEFAULTS
from .aliases_cloneofsimo import CLONEOFSIMO, CLONEOFSIMO_DEFAULTS

_KIND_TEXT = {"same": "same", "differs": "differs", "builtin": "built in", "none": "no equivalent",
              "expands": "holds other flags"}


def render_import_docs() -> str:
    """`docs/import.md`: `loraforge import`, and every known flag with its loraforge key."""
    lines = [
        "# Importing a kohya, diffusers or cloneofsimo command: `loraforge import`",
        "",
        "<!-- Generated from src/loraforge/config/aliases.py by `make docs` (write_import_docs); do not edit. -->",
        "",
        "`loraforge import` reads a kohya `train_network.py` / `sdxl_train_network.py` command line or its",
        "`--config_file` TOML, or a diffusers `train_dreambooth_lora.py`, `train_dreambooth_lora_sdxl.py`,",
        "`train_dreambooth_lora_sdxl_advanced.py`, `train_dreambooth_lora_sd15_advanced.py`,",
        "`train_text_to_image_lora.py` or `train_text_to_image_lora_sdxl.py` command line, or a cloneofsimo/lora",
        "`lora_pti` (python-fire flags: `--flag=value`, `--flag value`, a bare `--flag`, `--noflag`) or",
        "`train_lora_dreambooth.py` command line, pasted as it is (`accelerate launch` and its options, `python`,",
        "`\\` / `^` / `` ` `` line continuations, quotes, `export VAR=...` lines and `$VAR`), from a file or stdin,",
        "and writes the equivalent loraforge config:",
        "",
        "```bash",
        "loraforge import my_command.sh -o run.toml      # refuses to replace run.toml without --overwrite",
        "pbpaste | loraforge import -                    # TOML on stdout, the report on stderr",
        "loraforge train run.toml --dry-run",
        "```",
        "",
        "The report lists every flag it mapped (`--flag → section.key = value`), every flag it could not map and",
        "why (no equivalent, nothing to set, an option of the launcher), the defaults of the script it wrote because",
        "they differ from loraforge's (so the config trains as the command did), and every place where the meaning",
        "differs. The config it writes is validated: a value loraforge refuses is moved to the unmapped list with",
        "the reason.",
        "",
        "The same table gives the config errors their hints: `network_dim = 8` in `[network]` is answered with",
        "`did you mean 'rank'? (kohya's --network_dim; kohya's default is 4, loraforge's 16)`, a key written in the",
        "wrong section with the section it lives in (`it lives in [optimizer]: optimizer.learning_rate`), and a flag",
        "loraforge has no option for with what to do instead. Choices are accepted in any case (`type = \"AdamW\"`).",
        "",
        "Every flag of the seed guides' command lines (seed-practices.md §16) is in the tables below (a test checks",
        "it), and those commands import into configs that train on the embedded tiny models (tested).",
        "",
        "lora_pti's two phases (textual inversion for `--max_train_steps_ti` steps, then the LoRA for",
        "`--max_train_steps_tuning`) become loraforge's phased pivotal tuning: `training.train_text_encoder_ti =",
        "true`, `training.ti_steps` = the inversion steps, `training.max_train_steps` = their sum;",
        "`--placeholder_tokens` become `training.token_names`, `--learning_rate_ti` `optimizer.embedding_lr`.",
        "cloneofsimo's LoRA files (safeloras `.safetensors`, `.pt`) are read by `loraforge convert`.",
        "",
        "Kinds: **same** the key does what the flag does; **differs** the nearest key, the note says how it differs;",
        "**built in** nothing to set; **no equivalent** the note says what to do instead; **holds other flags** each",
        "of its values is mapped on its own.",
        "",
    ]
    groups = [
        (KOHYA, "kohya sd-scripts flags (`train_network.py`, `sdxl_train_network.py`)"),
        (DIFFUSERS, "diffusers flags (`train_dreambooth_lora*.py`, `train_text_to_image_lora*.py`)"),
        (CLONEOFSIMO, "cloneofsimo/lora flags (`lora_pti`, `train_lora_dreambooth.py`)"),
        (NETWORK_ARGS, "kohya `--network_args` keys (`networks.lora`, `lycoris.kohya`)"),
        (OPTIMIZER_ARGS, "kohya `--optimizer_args` keys"),
        (ACCELERATE, "`accelerate launch` options"),
    ]
    for tool, title in groups:
        lines += [f"## {title}", "", "| flag | loraforge key | kind | note |", "|---|---|---|---|"]
        for a in sorted((a for a in ALIASES if tool in a.tools), key=lambda a: a.flag):
            flag = a.flag if tool in (NETWORK_ARGS, OPTIMIZER_ARGS) else f"--{a.flag}"
            key = f"`{a.key}`" if a.key else "–"
            lines.append(f"| `{flag}` | {key} | {_KIND_TEXT[a.kind]} | {a.note.replace('|', '/')} |")
        lines.append("")
    lines += ["## Script defaults the import writes", "",
              "When a flag is absent, the script's default is written where it differs from loraforge's:", "",
              "| script | defaults |", "|---|---|"]
    lines.append(f"| kohya | {_defaults_text(KOHYA_DEFAULTS)}; `--network_train_unet_only` absent: "
                 "`network.train_text_encoder = true`; `--enable_bucket`: `--min_bucket_reso=256 "
                 "--max_bucket_reso=1024`; `--sample_prompts`: `--sample_sampler=ddim` |")
    for script, values in DIFFUSERS_DEFAULTS.items():
        lines.append(f"| `{script}` | {_defaults_text(values)}; no `--center_crop`: `dataset.center_crop = false`;"
                     " `network.init_lora_weights = \"gaussian\"` |")
    for script, values in CLONEOFSIMO_DEFAULTS.items():
        lines.append(f"| `{script}` | {_defaults_text(values)}; `--lora_unet_target_modules` absent: "
                     "`network.target_modules` = attention and GEGLU" + (
                         "; `--max_train_steps_ti=1000 --max_train_steps_tuning=1000`; `training.mixed_precision = "
                         "\"no\"` (fp32)" if script == "lora_pti" else "") + " |")
    lines.append("")
    return "\n".join(lines)


def _defaults_text(values: dict) -> str:
    return ", ".join(f"`--{k}={v}`" for k, v in values.items())


def write_import_docs(path: str = "docs/import.md") -> None:
    Path(path).write_text(render_import_docs(), encoding="utf-8")
