"""The diffusers/PEFT layout: `pytorch_lora_weights.safetensors` that `pipe.load_lora_weights(folder)` loads.

Written through diffusers' own `save_lora_weights`, with the peft `LoraConfig` of each part stored as
`lora_adapter_metadata` so diffusers rebuilds the real alpha (otherwise it assumes alpha = rank).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from ..utils.files import atomic_path

WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def save_diffusers_lora(network, family: str, target: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write the network (a peft-backed `LoraNetwork`) to `target` (a .safetensors path) atomically."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    def layers(part):
        sd = convert_state_dict_to_diffusers(network.peft_state_dict(part))
        return {k: v.detach().to(dtype).contiguous() for k, v in sd.items()}

    kwargs = {"unet_lora_layers": layers("unet"), "unet_lora_adapter_metadata": network.peft_config("unet")}
    if "te1" in network.parts:
        kwargs["text_encoder_lora_layers"] = layers("te1")
        kwargs["text_encoder_lora_adapter_metadata"] = network.peft_config("te1")
    if "te2" in network.parts:
        kwargs["text_encoder_2_lora_layers"] = layers("te2")
        kwargs["text_encoder_2_lora_adapter_metadata"] = network.peft_config("te2")
    pipe_cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    target = Path(target)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".diffusers-") as tmp:
        pipe_cls.save_lora_weights(tmp, weight_name=WEIGHT_NAME, **kwargs)
        with atomic_path(target, suffix=".safetensors") as out:
            shutil.copyfile(Path(tmp) / WEIGHT_NAME, out)
    return target
