"""The config-only diffusers folder of a family's full-size model (`families.architectures`), written once.

Why: `from_single_file` needs a diffusers folder (model_index.json, component configs, tokenizers, scheduler; no
weights) to know what the checkpoint is. Without one it downloads the default repository's configs, which fails
offline even with `local_files_only=True`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..families import family
from ..utils.files import atomic_dir, cache_home
from .tokenizer import clip_tokenizer

CONFIG_VERSION = 2  # bump when the full-size configs change, so cached folders are rewritten


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_config_folder(name: str, folder) -> Path:
    """Write the config-only diffusers folder of family `name` (no weights) into `folder`."""
    fam = family(name)
    folder = Path(folder)
    for component, data in fam.components.items():
        if component == "model_index":
            _write_json(folder / "model_index.json", data)
        elif component == "scheduler":
            _write_json(folder / "scheduler" / "scheduler_config.json", data)
        else:
            _write_json(folder / component / "config.json", data)
    for sub, pad in fam.tokenizer_pads.items():
        clip_tokenizer(pad_token=pad).save_pretrained(str(folder / sub))
    return folder


def config_folder(name: str) -> Path:
    """The config-only folder of family `name` under `cache_home()/configs/<family>-v<N>`, written once, atomically."""
    family(name)  # unknown names fail here, before a folder is made
    folder = cache_home() / "configs" / f"{name}-v{CONFIG_VERSION}"
    if (folder / "model_index.json").is_file():
        return folder
    with atomic_dir(folder) as tmp:
        write_config_folder(name, tmp)
    return folder
