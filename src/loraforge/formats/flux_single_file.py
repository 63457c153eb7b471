"""FLUX.1 transformer single files as users keep them: the original (BFL) layout of `flux1-dev.safetensors` /
`flux1-schnell.safetensors` (keys `double_blocks.0.img_attn.qkv.weight`, ...), bare or under ComfyUI's / the
all-in-one checkpoints' `model.diffusion_model.` prefix, read into and written from diffusers'
`FluxTransformer2DModel` state dict through the name table `families.flux` (fused qkv / linear1 split and joined by
rows, the final modulation's halves swapped, q/k norm `scale` <-> `weight`). The CLIP-L (`clip_l`), T5 (`t5xxl`) and
VAE (`ae`) files are separate, and keep their own (transformers / diffusers-readable) names."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ShapeMismatchError, UnsupportedError
from ..families.flux import diffusers_to_original, original_to_diffusers
from ..utils.files import open_safetensors, save_safetensors_atomic

PREFIXES = ("model.diffusion_model.", "diffusion_model.")


def strip_prefix(sd: dict) -> tuple[dict, str]:
    """(the transformer's keys without prefix, the prefix found: "" when the keys are bare)."""
    for prefix in PREFIXES:
        if any(k.startswith(prefix) for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, prefix
    return dict(sd), ""


def read_flux_transformer(path, config: dict | None = None) -> dict[str, torch.Tensor]:
    """The diffusers state dict of an original-layout FLUX transformer file (`config`: the diffusers transformer
    config, None: full-size [dev]; a [schnell] file simply has no guidance weights). Keys that are no transformer
    weight raise `UnsupportedError` naming them."""
    with open_safetensors(path) as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
    body, _ = strip_prefix(sd)
    if "double_blocks.0.img_attn.qkv.weight" not in body:
        raise UnsupportedError(f"{path}: not a FLUX.1 transformer file in the original layout (no "
                               "double_blocks.0.img_attn.qkv.weight, with or without model.diffusion_model.)")
    out, unused = original_to_diffusers(body, config)
    if unused:
        raise UnsupportedError(f"{path}: {len(unused)} keys are no weight of the FLUX.1 transformer "
                               f"({', '.join(unused[:5])}); is it another model, or pass its transformer config")
    return out


def save_flux_transformer(sd: dict[str, torch.Tensor], path, config: dict | None = None, prefix: str = "",
                          metadata: dict | None = None) -> Path:
    """Write a diffusers `FluxTransformer2DModel` state dict as an original-layout file (atomically), bare
    (`prefix` "") or under `model.diffusion_model.`."""
    if prefix not in ("",) + PREFIXES:
        raise ValueError(f"prefix {prefix!r}: choose one of {('',) + PREFIXES}")
    out, unused = diffusers_to_original(sd, config)
    if unused:
        raise ShapeMismatchError(f"{path}: {len(unused)} diffusers weights have no place in the original layout "
                                 f"({', '.join(unused[:5])})")
    save_safetensors_atomic({prefix + k: v for k, v in out.items()}, path, metadata=metadata)
    return Path(path)
