"""Full-size SD 1.5 / SD 2.1 / SDXL on the meta device: the original-layout key set we write is exactly what diffusers'
own single-file converters consume, and the SGM module names (kohya SDXL LoRA) are right."""

from __future__ import annotations

import pytest
import torch

from loraforge.families import ldm
from loraforge.formats.single_file import to_single_file_state_dict
from loraforge.families import full_size_config

EXPECTED_TYPE = {"sd15": "v1", "sd2": "v2", "sdxl": "xl_base"}
# Tensors we write: UNet + VAE + text encoder(s). No `position_ids` buffer, no EMA, no scheduler buffers; SD 2 without
# OpenCLIP's unused 24th layer and text_projection. offline.md section 4 measured 1130 (SD 1.5) and 2513 (SDXL).
EXPECTED_COUNTS = {
    "sd15": {"unet": 686, "vae": 248, "text": 196, "total": 1130},
    "sd2": {"unet": 686, "vae": 248, "text": 23 * 12 + 4, "total": 1214},
    "sdxl": {"unet": 1680, "vae": 248, "text": 196 + 32 * 12 + 5, "total": 2513},
}


def _meta_models(family):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(full_size_config(family, "unet"))
        vae = AutoencoderKL.from_config(full_size_config(family, "vae"))
        tes = [CLIPTextModel(CLIPTextConfig.from_dict(full_size_config(family, "text_encoder")))]
        if family == "sdxl":
            tes.append(CLIPTextModelWithProjection(CLIPTextConfig.from_dict(full_size_config(family, "text_encoder_2"))))
    return unet, vae, tes


@pytest.fixture(scope="module", params=["sd15", "sd2", "sdxl"])
def ldm_meta_family(request):
    family = request.param
    unet, vae, tes = _meta_models(family)
    return family, unet, vae, tes, to_single_file_state_dict(family, unet, vae, tes)


def _shapes(state_dict):
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def test_model_type_and_counts(ldm_meta_family):
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    family, unet, vae, tes, sd = ldm_meta_family
    assert infer_diffusers_model_type(sd) == EXPECTED_TYPE[family]
    counts = EXPECTED_COUNTS[family]
    assert sum(k.startswith(ldm.UNET_PREFIX) for k in sd) == counts["unet"] == len(unet.state_dict())
    assert sum(k.startswith(ldm.VAE_PREFIX) for k in sd) == counts["vae"] == len(vae.state_dict())
    assert sum(k.startswith(("cond_stage_model.", "conditioner.")) for k in sd) == counts["text"]
    assert len(sd) == counts["total"]


def test_unet_and_vae_through_diffusers_converters(ldm_meta_family):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    family, unet, vae, tes, sd = ldm_meta_family
    back = convert_ldm_unet_checkpoint(sd, dict(unet.config))
    assert _shapes(back) == _shapes(unet.state_dict())
    back = convert_ldm_vae_checkpoint(sd, dict(vae.config))
    assert _shapes(back) == _shapes(vae.state_dict())
    # mid attention is written as 1x1 conv, as in the original checkpoints
    assert sd["first_stage_model.decoder.mid.attn_1.proj_out.weight"].shape == (512, 512, 1, 1)


def test_text_encoders_through_diffusers_converters(ldm_meta_family):
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint

    family, unet, vae, tes, sd = ldm_meta_family

    def flat(d):  # diffusers strips `text_model.` itself for the flattened transformers-5 CLIPTextModel
        return {k.removeprefix("text_model."): v for k, v in d.items()}

    te_state = _shapes(flat(tes[0].state_dict()))
    if family == "sd2":
        back = convert_open_clip_checkpoint(tes[0], sd, prefix=ldm.SD2_TEXT_PREFIX)
        assert _shapes(flat(back)) == te_state
        return
    back = convert_ldm_clip_checkpoint(sd)
    assert _shapes(flat(back)) == te_state
    if family == "sdxl":
        back = convert_open_clip_checkpoint(tes[1], sd, prefix=ldm.SDXL_TEXT2_PREFIX)
        assert _shapes(back) == _shapes(tes[1].state_dict())
        assert sd["conditioner.embedders.1.model.text_projection"].shape == (1280, 1280)


def test_sgm_names_spot_checks():
    cfg = full_size_config("sdxl", "unet")
    expected = {
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": "input_blocks.4.1.transformer_blocks.0.attn1.to_q",
        "up_blocks.0.upsamplers.0.conv": "output_blocks.2.2.conv",
        "mid_block.attentions.0.proj_in": "middle_block.1.proj_in",
        "down_blocks.0.downsamplers.0.conv": "input_blocks.3.0.op",
        "mid_block.resnets.1.conv1": "middle_block.2.in_layers.2",
        "conv_in": "input_blocks.0.0",
        "conv_out": "out.2",
        "conv_norm_out": "out.0",
        "time_embedding.linear_1": "time_embed.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "down_blocks.2.attentions.1.transformer_blocks.9.ff.net.0.proj":
            "input_blocks.8.1.transformer_blocks.9.ff.net.0.proj",
        "down_blocks.1.resnets.0.conv_shortcut": "input_blocks.4.0.skip_connection",
        "down_blocks.1.resnets.0.time_emb_proj": "input_blocks.4.0.emb_layers.1",
        "up_blocks.1.resnets.2.norm2": "output_blocks.5.0.out_layers.0",
        "up_blocks.1.upsamplers.0.conv": "output_blocks.5.2.conv",
        "up_blocks.2.resnets.2.conv2": "output_blocks.8.0.out_layers.3",
    }
    for diffusers_name, original in expected.items():
        assert ldm.unet_module_to_original(diffusers_name, cfg) == original
        assert ldm.original_module_to_unet(original, cfg) == diffusers_name
    # SD 1.5: the upsampler of a level without attention sits at index 1
    sd15 = full_size_config("sd15", "unet")
    assert ldm.unet_module_to_original("up_blocks.0.upsamplers.0.conv", sd15) == "output_blocks.2.1.conv"
    assert ldm.unet_module_to_original("up_blocks.1.upsamplers.0.conv", sd15) == "output_blocks.5.2.conv"
    assert ldm.unet_module_to_original("down_blocks.3.resnets.1.conv2", sd15) == "input_blocks.11.0.out_layers.3"
    assert ldm.original_module_to_unet("model.diffusion_model.output_blocks.11.1.proj_out", sd15) == (
        "up_blocks.3.attentions.2.proj_out"
    )
    with pytest.raises(KeyError):
        ldm.unet_module_to_original("down_blocks.1", cfg)
    with pytest.raises(KeyError):
        ldm.original_module_to_unet("input_blocks.4", cfg)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_every_linear_and_conv_has_a_unique_original_name(family):
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    cfg = full_size_config(family, "unet")
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(cfg)
    original_keys = set(ldm.unet_key_map(cfg).values())
    seen = {}
    for name, module in unet.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        original = ldm.unet_module_to_original(name, cfg)
        assert original not in seen, f"{name} and {seen[original]} both map to {original}"
        seen[original] = name
        assert f"{original}.weight" in original_keys
        assert ldm.original_module_to_unet(original, cfg) == name
    assert len(seen) == {"sd15": 282, "sdxl": 794}[family]


def test_kohya_sgm_names_match_diffusers_lora_loader():
    """kohya SDXL LoRA keys built from our SGM names (every Linear/Conv2d of the full-size UNet: attention, resnets,
    samplers, embeddings, conv_in/out) are mapped by diffusers' own LoRA loader back to the modules they came from;
    an independent implementation of the same layout."""
    from accelerate import init_empty_weights
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    cfg = full_size_config("sdxl", "unet")
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(cfg)
    kohya, expected = {}, set()
    for name, module in unet.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            key = "lora_unet_" + ldm.unet_module_to_original(name, cfg).replace(".", "_")
            kohya[f"{key}.lora_down.weight"] = torch.zeros(1, 1)
            kohya[f"{key}.lora_up.weight"] = torch.zeros(1, 1)
            kohya[f"{key}.alpha"] = torch.tensor(1.0)
            expected.add(name)
    state_dict, _ = StableDiffusionXLPipeline.lora_state_dict(kohya, unet_config=unet.config)

    # diffusers answers in its old LoRA format: attention projections as `attn1.processor.to_q_lora.up.weight`
    processor = {"to_q_lora": "to_q", "to_k_lora": "to_k", "to_v_lora": "to_v", "to_out_lora": "to_out.0"}

    def module_of(key):
        key = key.removeprefix("unet.")
        if ".processor." in key:
            head, tail = key.split(".processor.")
            return f"{head}.{processor[tail.split('.')[0]]}"
        return key.rsplit(".lora", 1)[0]

    assert {module_of(k) for k in state_dict} == expected


@pytest.mark.parametrize(
    "layers, down, up",
    [
        (1, ("CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
         ("CrossAttnUpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D")),
        (3, ("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"), ("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")),
    ],
)
def test_unusual_unet_shapes_round_trip_through_diffusers(layers, down, up):
    """Depths and attention placements no real model has: diffusers' converter restores every tensor we renamed."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 32, 64), layers_per_block=layers, down_block_types=down,
        up_block_types=up, cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8,
    )
    state = unet.state_dict()
    original = {ldm.UNET_PREFIX + k: v for k, v in ldm.unet_to_original(state, unet.config).items()}
    back = convert_ldm_unet_checkpoint(original, dict(unet.config))
    assert back.keys() == state.keys()
    assert all(back[k] is state[k] for k in state)
    names = ldm.unet_key_map(unet.config)
    assert len(set(names.values())) == len(names)
    for key in state:
        assert ldm.original_module_to_unet(names[key], unet.config) == key
