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
  `hada_w1_a`..., `lokr_w1`..., keep-dim `dora_scale`), which the networks' `module_tensors()` already use.
"""

from __future__ import annotations

import torch

from ..networks.base import ModuleTensors

TE_PREFIXES = {"sd15": {"te1": "lora_te"}, "sd2": {"te1": "lora_te"}, "sdxl": {"te1": "lora_te1", "te2": "lora_te2"}}
_TEXT_MODEL_PARTS = ("encoder.", "embeddings.", "final_layer_norm")  # what lives under CLIP's `text_model`


def kohya_module_name(
    part: str, module_path: str, family: str, unet_config: dict | None = None, naming: str = "auto"
) -> str:
    """The kohya module name of (part, diffusers/transformers module path). UNet `naming`: "auto" (diffusers names
    for SD 1.x/2.x, SGM names for SDXL, as sd-scripts writes), "diffusers" or "ldm". Text encoders: `text_model_`
    for what CLIP keeps under `text_model` (whatever the transformers version), none for `text_projection`."""
    if part == "unet":
        path = module_path
        if naming == "ldm" or (naming == "auto" and family == "sdxl"):
            from ..families.ldm import unet_module_to_original

            path = unet_module_to_original(module_path, unet_config)
        return "lora_unet_" + path.replace(".", "_")
    prefix = TE_PREFIXES[family][part]
    core = module_path.removeprefix("text_model.")
    middle = "text_model_" if core.startswith(_TEXT_MODEL_PARTS) else ""
    return f"{prefix}_{middle}{core.replace('.', '_')}"


def kohya_state_dict(
    modules: dict[tuple[str, str], ModuleTensors],
    family: str,
    unet_config: dict | None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for (part, path), mt in modules.items():
        name = kohya_module_name(part, path, family, unet_config)
        if "." in name:
            raise ValueError(f"kohya module name {name!r} contains a dot; A1111 would drop the whole file")
        for suffix, tensor in mt.tensors.items():
            sd[f"{name}.{suffix}"] = tensor.to(dtype).contiguous()
        if mt.alpha is not None:
            sd[f"{name}.alpha"] = torch.tensor(mt.alpha, dtype=dtype)
    return sd


def split_kohya_key(key: str) -> tuple[str, str]:
    """`lora_unet_x_y.lora_up.weight` → (`lora_unet_x_y`, `lora_up.weight`)."""
    module, _, suffix = key.partition(".")
    return module, suffix
