"""The diffusers/PEFT layout: `pytorch_lora_weights.safetensors` that `pipe.load_lora_weights(folder)` loads.

Written through diffusers' own `save_lora_weights` from the network's kohya tensors (`lora_down` → `lora_A`,
`lora_up` → `lora_B`, conv layers included, kept in PEFT spelling), with a peft `LoraConfig` per part stored as `lora_adapter_metadata`:
target modules by full path, the most common rank/alpha as `r`/`lora_alpha` and the others in `rank_pattern` /
`alpha_pattern`, so diffusers rebuilds the real scale of every module (block-wise ranks, conv ranks, rsLoRA's
alpha·√rank) instead of assuming alpha = rank. Only plain LoRA / LoCon modules can be written: diffusers cannot load
LoHa, LoKr, Tucker cores or norm diffs, and drops `dora_scale` (networks say so in `diffusers_support()`).
"""

from __future__ import annotations

import collections
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import UnsupportedError
from ..families import family as family_info
from ..utils.files import TEMP_MARK, atomic_path

WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def _most_common(values):
    return collections.Counter(values).most_common(1)[0][0]


_CLIP_TEXT_MODEL = ("encoder.", "embeddings.", "final_layer_norm")  # what CLIP keeps under `text_model`


def file_path(part: str, path: str) -> str:
    """The module path a diffusers file names: the first text encoder (CLIP in every family) with its `text_model.`
    level, which transformers 5 dropped from `CLIPTextModel`: ComfyUI maps only `text_encoder.text_model.…` keys, and
    diffusers loads either spelling when the LoraConfig's `target_modules` name the loaded model's paths (tested in
    tests/training/test_flux_training.py and test_train_e2e.py)."""
    if part == "te1" and path.startswith(_CLIP_TEXT_MODEL):
        return f"text_model.{path}"
    return path


def peft_layers(modules: dict, part: str, dtype: torch.dtype | None) -> tuple[dict[str, torch.Tensor], dict]:
    """(PEFT state dict, LoraConfig dict) of one part from `module_tensors()` entries (`dtype` None: as stored)."""
    from peft import LoraConfig

    layers, ranks, alphas = {}, {}, {}
    for (p, module_path), mt in modules.items():
        if p != part:
            continue
        path = file_path(part, module_path)
        extra = set(mt.tensors) - {"lora_down.weight", "lora_up.weight"}
        if extra:
            raise UnsupportedError(
                f"{part}:{path} has {sorted(extra)}: diffusers cannot load this module as a LoRA; use the kohya "
                "file in AUTOMATIC1111 / ComfyUI, or `loraforge merge` it into the model"
            )
        down, up = mt.tensors["lora_down.weight"], mt.tensors["lora_up.weight"]
        layers[f"{path}.lora_A.weight"] = (down if dtype is None else down.to(dtype)).contiguous()
        layers[f"{path}.lora_B.weight"] = (up if dtype is None else up.to(dtype)).contiguous()
        # the LoraConfig names modules as the loaded model has them (PEFT matches target_modules by path suffix)
        ranks[module_path] = down.shape[0]
        alphas[module_path] = float(mt.alpha) if mt.alpha is not None else float(down.shape[0])
    r, alpha = _most_common(ranks.values()), _most_common(alphas.values())
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=sorted(ranks),
        rank_pattern={k: v for k, v in ranks.items() if v != r},
        alpha_pattern={k: v for k, v in alphas.items() if v != alpha},
    )
    return layers, config.to_dict()


def save_diffusers_lora(network, family: str, target: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write the network (LoRA or LoCon without Tucker) to `target` (a .safetensors path) atomically."""
    modules = network.module_tensors()
    kwargs = {}
    for part in network.parts:
        layers, config = peft_layers(modules, part, dtype)
        prefix = family_info(family).diffusers_prefix(part)  # "transformer" for FLUX's denoiser
        # PEFT spelling (`lora_A` / `lora_B`) for every module: diffusers' PEFT -> "lora.down" renaming only knows
        # attention projections, and a file mixing both spellings loses the renamed ones on load
        kwargs[f"{prefix}_lora_layers"] = layers
        kwargs[f"{prefix}_lora_adapter_metadata"] = config
    pipe_cls = family_info(family).pipeline_class()
    target = Path(target)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}{TEMP_MARK}diffusers-") as tmp:
        pipe_cls.save_lora_weights(tmp, weight_name=WEIGHT_NAME, **kwargs)
        with atomic_path(target, suffix=".safetensors") as out:
            shutil.copyfile(Path(tmp) / WEIGHT_NAME, out)
    return target
