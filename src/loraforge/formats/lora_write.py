"""Write bound LoRA modules (`formats.lora_file.LoraModule`) in the kohya layout or the diffusers layout.

The kohya names follow `formats.kohya` (diffusers block names for SD 1.x/2.x, SGM names for SDXL, `text_model_` for
text-encoder layers); `naming="ldm"` writes SD 1.x UNet modules in LDM names instead (`lora_unet_input_blocks_4_1_...`),
which ComfyUI and A1111 read as well. The diffusers layout is the one our trainer writes through diffusers'
`save_lora_weights` (`unet.<path>.lora.down.weight`, `text_encoder(_2).<path>.lora_linear_layer.down.weight`), with
the alphas in the PEFT `lora_adapter_metadata` header (diffusers assumes alpha = rank without it).
"""

from __future__ import annotations

import json
from typing import Iterable

import torch

from ..tools.errors import UnsupportedError
from .kohya import kohya_module_name
from .lora_file import LoraModule
from ..families import DIFFUSERS_PREFIXES
from .model_tree import ModelTree

ADAPTER_METADATA = "lora_adapter_metadata"
def kohya_name(part: str, path: str, tree: ModelTree, naming: str = "auto") -> str:
    """The kohya module name of (part, path) on `tree`'s model (see `formats.kohya.kohya_module_name`)."""
    return kohya_module_name(part, path, tree.family, tree.unet_config, naming)


def _alpha_tensor(m: LoraModule, like: torch.Tensor) -> torch.Tensor:
    if m.alpha_tensor is not None:
        return m.alpha_tensor
    return torch.tensor(float(m.alpha), dtype=like.dtype)


def kohya_state_dict(modules: Iterable[LoraModule], tree: ModelTree, naming: str = "keep") -> dict[str, torch.Tensor]:
    """Tensors as stored (no cast, so rewrites are bit-exact) under kohya names. `naming` "keep" keeps a module's
    own kohya name when it has one (otherwise "auto"); see `kohya_name` for the others."""
    sd: dict[str, torch.Tensor] = {}
    for m in modules:
        if naming == "keep" and "." not in m.name:
            name = m.name
        else:
            name = kohya_name(m.part, m.path, tree, "auto" if naming == "keep" else naming)
        for suffix, tensor in m.tensors.items():
            if suffix == "dora_scale" and tensor.dim() == 1:  # PEFT's 1-D magnitude: keep-dim output axis
                tensor = tensor.reshape(-1, *[1] * (len(tree.shape(m.part, m.path) or (0, 0)) - 1))
            sd[f"{name}.{suffix}"] = tensor
        if m.alpha is not None:
            sd[f"{name}.alpha"] = _alpha_tensor(m, next(iter(m.tensors.values())))
    return sd


def diffusers_state_dict(modules: Iterable[LoraModule]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, header metadata) in the layout `pipe.load_lora_weights` reads. Plain LoRA / LoCon only: diffusers
    has no LoHa / LoKr / Tucker and drops DoRA."""
    modules = list(modules)
    bad = [f"{m.name} ({'DoRA' if 'dora_scale' in m.tensors else m.kind})" for m in modules
           if m.kind != "lora" or "dora_scale" in m.tensors]
    if bad:
        raise UnsupportedError(
            f"diffusers loads plain LoRA/LoCon only; {len(bad)} modules are not: {', '.join(bad[:5])}. "
            "Keep the kohya file for ComfyUI / A1111"
        )
    from ..networks.base import ModuleTensors
    from .diffusers_lora import peft_layers

    tensors = {
        (m.part, m.path): ModuleTensors(
            {"lora_down.weight": m.tensors["lora_down.weight"], "lora_up.weight": m.tensors["lora_up.weight"]},
            m.alpha,
        )
        for m in modules
    }
    # The trainer's layout exactly: PEFT spelling and diffusers' `lora_adapter_metadata` (the peft LoraConfig of
    # each part, flattened with the part's prefix), tensors as stored.
    sd: dict[str, torch.Tensor] = {}
    config: dict = {}
    for part in DIFFUSERS_PREFIXES:
        if not any(p == part for p, _ in tensors):
            continue
        layers, cfg = peft_layers(tensors, part, None)
        prefix = DIFFUSERS_PREFIXES[part]
        sd.update({f"{prefix}.{k}": v for k, v in layers.items()})
        config.update({f"{prefix}.{k}": sorted(v) if isinstance(v, set) else v for k, v in cfg.items()})
    return sd, {"format": "pt", ADAPTER_METADATA: json.dumps(config, indent=2, sort_keys=True)}
