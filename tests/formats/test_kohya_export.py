"""The trainer's own kohya export, on the full-size SD 1.5 / SD 2.1 / SDXL architectures (built on the meta device,
only the LoRA tensors materialised): every module resolves to an existing weight in ComfyUI's and A1111's key maps,
and diffusers accepts the file."""

import pytest
import torch

from loraforge.config import load_config
from loraforge.formats.check import check_state_dict
from loraforge.formats.kohya import kohya_module_name, kohya_state_dict
from loraforge.models.configs import full_size_config
from loraforge.networks import create_network


class MetaModel:
    """Just enough of an SDModel for `network.apply`: full-size modules on the meta device."""

    def __init__(self, family: str):
        from accelerate import init_empty_weights

        from loraforge.models.family import FAMILIES

        self.family = FAMILIES[family]
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        with init_empty_weights():
            self.unet = UNet2DConditionModel.from_config(full_size_config(family, "unet"))
            self.text_encoders = [CLIPTextModel(CLIPTextConfig.from_dict(full_size_config(family, "text_encoder")))]
            if family == "sdxl":
                cfg2 = CLIPTextConfig.from_dict(full_size_config(family, "text_encoder_2"))
                self.text_encoders.append(CLIPTextModelWithProjection(cfg2))


def materialise_lora(module):
    for name, sub in module.named_modules():
        if name.endswith(("lora_A.default", "lora_B.default")):
            sub.to_empty(device="cpu")
            torch.nn.init.normal_(sub.weight, std=0.01)


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_full_size_export_resolves_in_every_consumer(family):
    cfg = load_config(None, ["network.rank=4", "network.alpha=2", "network.train_text_encoder=true"]).network
    model = MetaModel(family)
    net = create_network(cfg)
    net.apply(model)
    for m in [model.unet, *model.text_encoders]:
        materialise_lora(m)
    sd = kohya_state_dict(net.module_tensors(), family, dict(model.unet.config))
    report = check_state_dict(sd, family)
    n_modules = len(sd) // 3
    assert report.errors == [], [str(i) for i in report.errors]
    for name in ("comfyui", "a1111"):
        rep = report.consumers[name]
        assert rep.total == n_modules and rep.applied == n_modules and not rep.unmatched, (name, rep.lines())
    assert report.consumers["diffusers"].loads, report.consumers["diffusers"].lines()
    # module counts of sd-scripts' defaults for attention q/k/v/out (kohya.md §2.1: 16 / 70 transformer blocks)
    unet_modules = sum(1 for k in sd if k.startswith("lora_unet_") and k.endswith(".alpha"))
    assert unet_modules == {"sd15": 16 * 8, "sd2": 16 * 8, "sdxl": 70 * 8}[family]
    te_layers = {"sd15": 12, "sd2": 23, "sdxl": 12 + 32}[family]
    assert sum(1 for k in sd if k.startswith("lora_te") and k.endswith(".alpha")) == te_layers * 4


def test_names_follow_the_ecosystem():
    unet = full_size_config("sdxl", "unet")
    assert kohya_module_name("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "sdxl", unet) == \
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    assert kohya_module_name("unet", "mid_block.attentions.0.transformer_blocks.9.ff.net.0.proj", "sdxl", unet) == \
        "lora_unet_middle_block_1_transformer_blocks_9_ff_net_0_proj"
    assert kohya_module_name("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", "sd15", None) == \
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    # transformers 5 CLIPTextModel has no text_model level; the file keeps it
    assert kohya_module_name("te1", "encoder.layers.0.self_attn.q_proj", "sd15") == \
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    assert kohya_module_name("te2", "text_model.encoder.layers.31.mlp.fc2", "sdxl") == \
        "lora_te2_text_model_encoder_layers_31_mlp_fc2"
    assert kohya_module_name("te1", "encoder.layers.11.self_attn.out_proj", "sdxl") == \
        "lora_te1_text_model_encoder_layers_11_self_attn_out_proj"
