"""A1111 v1.10.1 model: layer names, convert_diffusers_name_to_compvis, the lookup chain with its SDXL gaps, the
first-dot split, MultiheadAttention rules, module types, and full-size mapping (formats.md §2.2, §2.3, §3)."""

from __future__ import annotations

import pytest
import torch
from .consumer_fixtures import ALGOS, make_file

from loraforge.formats.consumers import a1111
from loraforge.formats.consumers.keys import group_modules

SDXL_GAPS = {  # formats.md §2.3: keys A1111 1.10.1 does not match on SDXL
    "lora_unet_up_blocks_0_upsamplers_0_conv",  # regex hard-codes SD 1.x's output_blocks_2_1_conv
    "lora_unet_add_embedding_linear_1",  # no rule for add_embedding
    "lora_unet_add_embedding_linear_2",
    "lora_te2_text_projection",  # an nn.Parameter in OpenCLIP, not a layer
}


def test_layer_names():
    sd15, sd2, sdxl = (a1111.layers(f) for f in ("sd15", "sd2", "sdxl"))
    assert sd15["diffusion_model_input_blocks_4_1_transformer_blocks_0_attn2_to_k"] == ("linear", (320 * 2, 768))
    assert sd15["transformer_text_model_encoder_layers_11_mlp_fc2"][0] == "linear"
    assert sd2["model_transformer_resblocks_23_attn"] == ("mha", (3072, 1024))  # 24 OpenCLIP-H layers
    assert sd2["model_transformer_resblocks_0_attn_out_proj"] == ("linear", (1024, 1024))
    assert sdxl["0_transformer_text_model_encoder_layers_0_self_attn_q_proj"] == ("linear", (768, 768))
    assert sdxl["1_model_transformer_resblocks_31_mlp_c_fc"] == ("linear", (5120, 1280))
    assert sdxl["1_model_transformer_resblocks_0_attn"] == ("mha", (3840, 1280))
    assert sdxl["diffusion_model_input_blocks_4_1_transformer_blocks_0_attn1"] == ("container", None)
    assert "1_model_text_projection" not in sdxl and "diffusion_model_output_blocks_2_2_conv" in sdxl


@pytest.mark.parametrize(
    "name,sd2,expected",
    [
        ("lora_unet_conv_in", False, "diffusion_model_input_blocks_0_0"),
        ("lora_unet_conv_out", False, "diffusion_model_out_2"),
        ("lora_unet_time_embedding_linear_2", False, "diffusion_model_time_embed_2"),
        ("lora_unet_down_blocks_2_resnets_1_conv_shortcut", False, "diffusion_model_input_blocks_8_0_skip_connection"),
        ("lora_unet_down_blocks_1_attentions_1_proj_in", False, "diffusion_model_input_blocks_5_1_proj_in"),
        ("lora_unet_mid_block_resnets_1_conv2", False, "diffusion_model_middle_block_2_out_layers_3"),
        ("lora_unet_mid_block_attentions_0_proj_out", False, "diffusion_model_middle_block_1_proj_out"),
        ("lora_unet_up_blocks_3_resnets_2_norm1", False, "diffusion_model_output_blocks_11_0_in_layers_0"),
        ("lora_unet_down_blocks_2_downsamplers_0_conv", False, "diffusion_model_input_blocks_9_0_op"),
        ("lora_unet_up_blocks_0_upsamplers_0_conv", False, "diffusion_model_output_blocks_2_1_conv"),
        ("lora_unet_up_blocks_2_upsamplers_0_conv", False, "diffusion_model_output_blocks_8_2_conv"),
        ("lora_te_text_model_encoder_layers_3_mlp_fc1", False, "transformer_text_model_encoder_layers_3_mlp_fc1"),
        ("lora_te_text_model_encoder_layers_3_mlp_fc1", True, "model_transformer_resblocks_3_mlp_c_fc"),
        ("lora_te_text_model_encoder_layers_3_self_attn_q_proj", True, "model_transformer_resblocks_3_attn_q_proj"),
        ("lora_te2_text_model_encoder_layers_9_mlp_fc2", False, "1_model_transformer_resblocks_9_mlp_c_proj"),
        ("lora_unet_add_embedding_linear_1", False, "lora_unet_add_embedding_linear_1"),
    ],
)
def test_convert_diffusers_name_to_compvis(name, sd2, expected):
    assert a1111.convert_diffusers_name_to_compvis(name, sd2) == expected


B = "transformer_blocks_0"
TE_L = "text_model_encoder_layers_0"


@pytest.mark.parametrize(
    "family,module,layer",
    [
        ("sd15", f"lora_unet_input_blocks_4_1_{B}_attn2_to_k", f"diffusion_model_input_blocks_4_1_{B}_attn2_to_k"),
        ("sd15", f"lora_te1_{TE_L}_self_attn_q_proj", f"transformer_{TE_L}_self_attn_q_proj"),
        ("sdxl", f"lora_unet_input_blocks_4_1_{B}_attn1_to_q", f"diffusion_model_input_blocks_4_1_{B}_attn1_to_q"),
        ("sdxl", f"lora_unet_down_blocks_1_attentions_0_{B}_attn1_to_q",
         f"diffusion_model_input_blocks_4_1_{B}_attn1_to_q"),  # fmt: skip
        ("sdxl", "lora_unet_up_blocks_1_upsamplers_0_conv", "diffusion_model_output_blocks_5_2_conv"),
        ("sdxl", "lora_unet_output_blocks_2_2_conv", "diffusion_model_output_blocks_2_2_conv"),
        ("sdxl", "lora_unet_label_emb_0_0", "diffusion_model_label_emb_0_0"),
        ("sdxl", f"lora_te1_{TE_L}_self_attn_q_proj", f"0_transformer_{TE_L}_self_attn_q_proj"),
        ("sdxl", f"lora_te2_{TE_L}_self_attn_q_proj", "1_model_transformer_resblocks_0_attn"),
        ("sdxl", f"lora_te2_{TE_L}_self_attn_out_proj", "1_model_transformer_resblocks_0_attn_out_proj"),
        ("sdxl", "lora_unet_up_blocks_0_upsamplers_0_conv", None),
        ("sdxl", "lora_unet_add_embedding_linear_1", None),
        ("sdxl", "lora_te2_text_projection", None),
        ("sdxl", "unet", None),
    ],
)
def test_lookup_chain(family, module, layer):
    assert a1111.resolve(module, family)[1] == layer


def _lora(sd, module, out, inn, up="lora_up.weight", down="lora_down.weight", alpha=2.0):
    sd[f"{module}.{down}"] = torch.randn(4, inn)
    sd[f"{module}.{up}"] = torch.randn(out, 4)
    sd[f"{module}.alpha"] = torch.tensor(alpha)


def test_openclip_attention_needs_q_k_v_and_out_proj():
    te2 = "lora_te2_text_model_encoder_layers_{}_self_attn_{}"
    sd = {}
    for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
        _lora(sd, te2.format(0, p), 1280, 1280)
    for p in ("q_proj", "k_proj", "v_proj"):  # layer 1 has no out_proj
        _lora(sd, te2.format(1, p), 1280, 1280)
    _lora(sd, te2.format(2, "out_proj"), 1280, 1280)  # layer 2 only out_proj
    res = a1111.load(sd, "sdxl")
    assert res.fatal is None and res.unmatched == []
    assert {te2.format(0, p) for p in ("q_proj", "k_proj", "v_proj", "out_proj")} == res.applied
    assert set(res.skipped) == {te2.format(1, p) for p in ("q_proj", "k_proj", "v_proj")} | {te2.format(2, "out_proj")}


def test_dotted_module_name_loses_the_whole_file():
    sd = {}
    _lora(sd, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1.to_q", 320, 320)
    _lora(sd, "lora_unet_conv_in", 320, 36)
    res = a1111.load(sd, "sd15")
    assert res.fatal and "no module type accepts" in res.fatal  # matched the attn1 container with 'to_q.lora_up...'


def test_peft_keys_match_nothing():
    sd = {}
    _lora(sd, "unet.down_blocks.1.attentions.0.proj_in", 640, 640, up="lora_B.weight", down="lora_A.weight")
    res = a1111.load(sd, "sd15")
    assert res.fatal is None and res.applied == set() and sorted(res.unmatched) == sorted(sd)


def test_lora_A_B_names_drop_alpha():
    W = torch.randn(8, 6)
    t = {"lora_B.weight": torch.randn(8, 4), "lora_A.weight": torch.randn(4, 6), "alpha": torch.tensor(1.0)}
    merged = a1111.merged_weight(W, t)
    assert torch.allclose(merged - W, t["lora_B.weight"] @ t["lora_A.weight"], atol=1e-6)  # scale 1, not 1/4


def test_module_types():
    assert a1111.module_type({"lora_up.weight": 0, "lora_down.weight": 0, "alpha": 0}) == "lora"
    assert a1111.module_type({"lora_A.weight": 0, "lora_B.weight": 0}) == "lora"
    assert a1111.module_type({"hada_w1_a": 0, "hada_w1_b": 0, "hada_w2_a": 0, "hada_w2_b": 0}) == "loha"
    assert a1111.module_type({"lokr_w1": 0, "lokr_w2_a": 0, "lokr_w2_b": 0}) == "lokr"
    assert a1111.module_type({"lokr_w1": 0, "lokr_w2_a": 0}) is None
    assert a1111.module_type({"weight": 0, "on_input": 0}) == "ia3"
    assert a1111.module_type({"to_q.lora_up.weight": 0}) is None


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("algo", ALGOS)
def test_full_size_files_map_except_the_documented_gaps(family, algo):
    sd = make_file(family, algo, projection=family == "sdxl")
    res = a1111.load(sd, family)
    assert res.fatal is None and res.skipped == {}
    modules = set(group_modules(sd))
    gaps = modules & SDXL_GAPS if family == "sdxl" else set()
    if family == "sdxl":  # plain LoRA skips 3x3 convs, so its file has no upsampler module
        assert gaps == SDXL_GAPS - ({"lora_unet_up_blocks_0_upsamplers_0_conv"} if algo == "lora" else set())
    unmatched_modules = {k.partition(".")[0] for k in res.unmatched}
    assert unmatched_modules == gaps
    unet = {m for m in modules if m.startswith("lora_unet_")} - gaps
    te = modules - unet - gaps
    assert unet and te and (unet | te) == res.applied


def test_sdxl_sgm_names_map_except_text_projection():
    sd = make_file("sdxl", "locon", naming="sgm", projection=True)
    res = a1111.load(sd, "sdxl")
    assert {k.partition(".")[0] for k in res.unmatched} == {"lora_te2_text_projection"}
    assert len(res.applied) == len(group_modules(sd)) - 1
