"""Recipe presets from the seed guides' experiments (seed-practices.md §5-§8). A preset fills defaults; every option
written in the config or with `--set` overrides it. `loraforge presets` prints them."""

from __future__ import annotations

import copy
import difflib
from typing import Any

from ..families import FAMILIES
from .training_flow import DIFFUSION_ONLY

_PRODIGY = {
    "type": "prodigy",
    "learning_rate": 1.0,
    "text_encoder_lr": 1.0,  # with Prodigy every group starts from the same rate [B]
    "adam_beta2": 0.99,
    "adam_weight_decay": 0.01,
    "prodigy_safeguard_warmup": True,
    "prodigy_use_bias_correction": True,
    "lr_scheduler": "constant",
    "lr_warmup_steps": 0,
}

PRESETS: dict[str, dict[str, Any]] = {
    # [B-zh] final face recipe: rank 32, Prodigy 1.0 (TE 1.0), repeats 1, 75-120 steps per image (120 looked best),
    # pivotal tuning, prior preservation with 150 (real) class images; snr_gamma 5.0 from the [B] grids.
    "face": {
        "network": {"rank": 32, "alpha": 32},
        "optimizer": dict(_PRODIGY),
        "training": {"max_train_steps_per_image": 120, "snr_gamma": 5.0, "train_text_encoder_ti": True,
                     "train_text_encoder_ti_frac": 0.5, "batch_size": 1},
        "dataset": {"repeats": 1},
    },
    # [B] Huggy object runs: rank 32, Prodigy 1.0 (or AdamW 1e-4 / TE 3e-4), pivotal tuning, snr_gamma 5.0,
    # 1000-1500 steps, repeats 1.
    "object": {
        "network": {"rank": 32, "alpha": 32},
        "optimizer": dict(_PRODIGY),
        "training": {"max_train_steps": 1000, "snr_gamma": 5.0, "train_text_encoder_ti": True,
                     "train_text_encoder_ti_frac": 0.5, "batch_size": 1},
        "dataset": {"repeats": 1, "random_flip": True},
    },
    # [B]/[B-zh] Y2K style runs: the best trade-off was 1000 steps, batch 1-2, repeats 1-2, snr_gamma 5.0 or none;
    # rank 16 of the 4/16/32 grid, Prodigy 1.0, pivotal tuning.
    "style": {
        "network": {"rank": 16, "alpha": 16},
        "optimizer": dict(_PRODIGY),
        "training": {"max_train_steps": 1000, "snr_gamma": 5.0, "train_text_encoder_ti": True,
                     "train_text_encoder_ti_frac": 0.5, "batch_size": 1},
        "dataset": {"repeats": 2, "random_flip": True},
    },
}


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def apply_preset(data: dict[str, Any]) -> dict[str, Any]:
    """Config data with its `preset` expanded under it (explicit values win). Unknown preset: ValueError."""
    name = data.get("preset")
    if name is None:
        return data
    if name not in PRESETS:
        close = difflib.get_close_matches(str(name), list(PRESETS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown preset {name!r}{hint} (presets: {', '.join(PRESETS)})")
    rest = {k: v for k, v in data.items() if k != "preset"}
    preset = PRESETS[name]
    fam = FAMILIES.get(str((data.get("model") or {}).get("family")))
    if fam is not None and fam.is_flow:  # FLUX: the recipe without its DDPM-only options (min-SNR-γ, ...)
        preset = {**preset, "training": {k: v for k, v in preset.get("training", {}).items()
                                         if k not in DIFFUSION_ONLY}}
    merged = _merge(preset, rest)
    merged["preset"] = name
    return merged


def presets_toml() -> str:
    import tomli_w

    return "\n".join(f"# preset = \"{name}\"\n{tomli_w.dumps(values)}" for name, values in PRESETS.items())
