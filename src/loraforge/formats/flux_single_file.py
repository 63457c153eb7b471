"""FLUX.1 transformer single files as users keep them: the original (BFL) layout of `flux1-dev.safetensors` /
`flux1-schnell.safetensors` (keys `double_blocks.0.img_attn.qkv.weight`, ...), bare or under ComfyUI's / the
all-in-one checkpoints' `model.diffusion_model.` prefix, read into and written from diffusers'
`FluxTransformer2DModel` state dict through the name table `families.flux` (fused qkv / linear1 split and joined by
rows, the final modulation's halves swapped, q/k norm `scale` <-> `weight`). The CLIP-L (`clip_l`), T5 (`t5xxl`) and
VAE (`ae`) files are separate, and keep their own (transformers / diffusers-readable) names."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModelLoadError, ShapeMismatchError, UnsupportedError
from ..families.flux import TRANSFORMER_PREFIXES as PREFIXES
from ..families.flux import diffusers_to_original
from ..models.flux_files import read_flux_transformer_file
from ..utils.files import save_safetensors_atomic


def read_flux_transformer(path, config: dict | None = None) -> dict[str, torch.Tensor]:
    """The diffusers state dict of an original-layout FLUX transformer file (`config`: the diffusers transformer
    config, None: full-size [dev]; a [schnell] file simply has no guidance weights), read as the model loader reads
    it (`models.flux_files`; a diffusers-layout file is returned as it is). Keys that are no transformer weight
    raise `UnsupportedError` naming them."""
    try:
        return read_flux_transformer_file(path, config)
    except ModelLoadError as e:
        raise UnsupportedError(str(e)) from None


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
