"""Write bound LoRA modules (`loraforge.adapters.AdapterModule`) in the diffusers layout. (The kohya layout has one
writer, `formats.kohya.kohya_state_dict`, for the trainer and the tools.)

The diffusers layout is the one our trainer writes through diffusers' `save_lora_weights` (`unet.<path>.lora.down.weight`, `text_encoder(_2).<path>.lora_linear_layer.down.weight`), with
the alphas in the PEFT `lora_adapter_metadata` header (diffusers assumes alpha = rank without it).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Iterable

import torch

from ..adapters import AdapterModule
from ..errors import UnsupportedError
from ..families import DIFFUSERS_PREFIXES
from .diffusers_lora import peft_layers

ADAPTER_METADATA = "lora_adapter_metadata"


def diffusers_state_dict(modules: Iterable[AdapterModule]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
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
    tensors = {
        (m.part, m.path): replace(m, tensors={k: m.tensors[k] for k in ("lora_down.weight", "lora_up.weight")})
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
