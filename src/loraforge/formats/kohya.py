"""The kohya layout (sd-scripts' `networks.lora`, LyCORIS' `lycoris.kohya`): what AUTOMATIC1111 and ComfyUI load.

Rules (reference: formats.md §1–§2, kohya.md §2):
- key = `<prefix>_<module path with "." → "_">.<tensor suffix>`; no dot inside the module part (A1111 splits on the
  first dot); prefixes `lora_unet`, `lora_te` (SD 1.x/2.x), `lora_te1` / `lora_te2` (SDXL);
- SD 1.x/2.x UNet modules keep their diffusers names; SDXL UNet modules use the SGM names sd-scripts writes
  (`input_blocks_4_1_transformer_blocks_0_attn1_to_q`);
- text-encoder modules always carry `text_model_` (transformers ≥ 5.6 dropped that level from `CLIPTextModel`; the
  ecosystem's files keep it);
- one 0-dim `alpha` per module holding the alpha consumers divide by the rank (alpha·√rank for rsLoRA); none for
  modules that have no rank (`w_norm`/`b_norm` norm diffs);
- the tensor suffixes of each algo as LyCORIS writes them (`lora_down.weight`/`lora_up.weight`/`lora_mid.weight`,
  `hada_w1_a`..., `lokr_w1`..., keep-dim `dora_scale`): the spelling of `loraforge.adapters.AdapterModule`, which the
  networks' `module_tensors()`, the file reader and the tools use.

One writer for the trainer's export and the tools' rewrites (`kohya_state_dict`).
"""

from __future__ import annotations

from typing import Iterable

import torch

from ..adapters import AdapterModule
from ..errors import UnsupportedError
from ..families import family as family_info
from ..families.ldm import unet_module_to_original
from .flux_lora import flux_kohya_state_dict

_TEXT_MODEL_PARTS = ("encoder.", "embeddings.", "final_layer_norm")  # what lives under CLIP's `text_model`
# The `Family.kohya_unet_names` this writer knows: SD 1.x/2.x's diffusers names, SDXL's SGM names, FLUX's BFL names
# ("bfl": fused qkv / linear1 layers, written by `formats.flux_lora.flux_kohya_state_dict`).
KOHYA_UNET_NAMINGS = ("diffusers", "original", "bfl")


def kohya_support(family: str) -> str | None:
    """Why the kohya file of `family` cannot be written, or None when it can."""
    fam = family_info(family)
    if fam.kohya_unet_names in KOHYA_UNET_NAMINGS:
        return None
    return (f"the kohya layout of {fam.label} ({fam.kohya_unet_names} names, fused layers) is not written by this "
            "version")


def kohya_module_name(
    part: str, module_path: str, family: str, unet_config: dict | None = None, naming: str = "auto"
) -> str:
    """The kohya module name of (part, diffusers/transformers module path). UNet `naming`: "auto" (diffusers names
    for SD 1.x/2.x, SGM names for SDXL, as sd-scripts writes), "diffusers" or "ldm". Text encoders: `text_model_`
    for what CLIP keeps under `text_model` (whatever the transformers version), none for `text_projection`."""
    if part == "unet":
        why = kohya_support(family)
        if why:  # never a file with names no consumer knows
            raise UnsupportedError(f"no kohya name for {module_path}: {why}")
        if family_info(family).kohya_unet_names == "bfl":  # the name depends on the fused layer the module joins
            raise UnsupportedError(f"{module_path}: a FLUX module's kohya name is that of the fused layer it joins; "
                                   "write the file with kohya_state_dict")
        path = module_path
        if naming == "ldm" or (naming == "auto" and family_info(family).kohya_unet_names == "original"):
            path = unet_module_to_original(module_path, unet_config)
        return "lora_unet_" + path.replace(".", "_")
    prefix = family_info(family).text_encoder(part).kohya_prefixes[0]
    core = module_path.removeprefix("text_model.")
    middle = "text_model_" if core.startswith(_TEXT_MODEL_PARTS) else ""
    return f"{prefix}_{middle}{core.replace('.', '_')}"


def kohya_state_dict(
    modules: Iterable[AdapterModule],
    family: str,
    unet_config: dict | None = None,
    naming: str = "auto",
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """The kohya state dict of bound modules (part and path set). `naming`: "auto", "diffusers", "ldm" (see
    `kohya_module_name`) or "keep" (a module's own kohya name from the file it was read from, when it has one, else
    "auto"). `dtype` None keeps the tensors as stored (bit-exact rewrites); else every tensor is cast to it. A PEFT 1-D
    `dora_scale` is written keep-dim on the output axis. FLUX: sd-scripts' layout, split q/k/v LoRAs fused exactly
    (`flux_kohya_state_dict`; `unet_config` is the transformer's config)."""
    if family_info(family).kohya_unet_names == "bfl":
        return flux_kohya_state_dict(modules, config=unet_config, dtype=dtype)
    sd: dict[str, torch.Tensor] = {}
    for m in modules:
        if naming == "keep" and m.name and "." not in m.name:
            name = m.name
        else:
            name = kohya_module_name(m.part, m.path, family, unet_config, "auto" if naming == "keep" else naming)
        if "." in name:
            raise ValueError(f"kohya module name {name!r} contains a dot; A1111 would drop the whole file")
        dims = 4 if any(t.dim() == 4 for t in m.tensors.values()) else 2
        for suffix, tensor in m.tensors.items():
            if suffix == "dora_scale" and tensor.dim() == 1:  # PEFT's 1-D magnitude: keep-dim output axis
                tensor = tensor.reshape(-1, *[1] * (dims - 1))
            sd[f"{name}.{suffix}"] = tensor if dtype is None else tensor.to(dtype).contiguous()
        if m.alpha is not None:
            if m.alpha_tensor is not None and dtype is None:
                sd[f"{name}.alpha"] = m.alpha_tensor
            else:
                like = dtype or next(iter(m.tensors.values())).dtype
                sd[f"{name}.alpha"] = torch.tensor(float(m.alpha), dtype=like)
    return sd
