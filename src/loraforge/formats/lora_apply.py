"""Patching a model with any number of LoRA files (`loraforge merge`, `loraforge sample --lora`): W += Σ sᵢ·ΔWᵢ, each
ΔW from `loraforge.adapters.module_delta` (the math training and export use too)."""

from __future__ import annotations

import torch

from ..adapters import AdapterModule, module_delta
from .lora_file import LoraFile


def part_scale(part: str, unet_scale: float, te_scale: float) -> float:
    return unet_scale if part == "unet" else te_scale


def apply_loras(parts: dict, loras: list[tuple[LoraFile, float, float]]) -> int:
    """Patch the weights of `parts` ({"unet": unet, "te1": text_encoder, ...}) in place: W += Σ sᵢ·ΔWᵢ, every ΔW
    computed against the unpatched W (so the order of the files does not matter, DoRA included). Each entry is
    (bound LoraFile, UNet scale, text-encoder scale). Returns the number of weights changed."""
    updates: dict[tuple[str, str], list[tuple[AdapterModule, float]]] = {}
    for lora, unet_scale, te_scale in loras:
        for target, module in lora.by_target().items():
            scale = part_scale(target[0], unet_scale, te_scale)
            if scale != 0.0:
                updates.setdefault(target, []).append((module, scale))
    with torch.no_grad():
        for (part, path), items in updates.items():
            weight = parts[part].get_submodule(path).weight
            base = weight.detach().float()
            total = torch.zeros_like(base)
            for module, scale in items:
                total += scale * module_delta(module, base.shape, base).to(base.device)
            weight.copy_((base + total).to(weight.dtype))
    return len(updates)
