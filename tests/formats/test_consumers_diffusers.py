"""diffusers 0.42.1 rules (formats.md §11): the static replay through diffusers' own conversion code agrees with the
real `load_lora_weights` run on meta-device models, case by case."""

from __future__ import annotations

import pytest
import torch
from .consumer_fixtures import make_file

from loraforge.formats.consumers import diffusers_rules
from loraforge.formats.consumers.keys import group_modules

Q = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
DQ = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
TE = "lora_te_text_model_encoder_layers_0_"


def _lora(sd, name, out, inn, k=None, up="lora_up.weight", down="lora_down.weight"):
    sd[f"{name}.{down}"] = torch.randn(4, inn, *(k or ()))
    sd[f"{name}.{up}"] = torch.randn(out, 4, *((1, 1) if k else ()))
    sd[f"{name}.alpha"] = torch.tensor(2.0)
    return sd


def _case(name):
    sd = {}
    if name == "te-qkv-and-mlp":  # q/k/v without out_proj are dropped
        for p in ("q_proj", "k_proj", "v_proj"):
            _lora(sd, TE + "self_attn_" + p, 768, 768)
        _lora(sd, TE + "mlp_fc1", 3072, 768)
        return "sd15", sd, {TE + "mlp_fc1"}, {"text_encoder": {"encoder.layers.0.mlp.fc1"}}
    if name == "te-qkv-only":
        for p in ("q_proj", "k_proj", "v_proj"):
            _lora(sd, TE + "self_attn_" + p, 768, 768)
        return "sd15", sd, "Could not automatically infer state dict type", ValueError
    if name == "te-qkvo":
        for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
            _lora(sd, TE + "self_attn_" + p, 768, 768)
        return "sd15", sd, {TE + f"self_attn_{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")}, {
            "text_encoder": {f"encoder.layers.0.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")}
        }
    if name == "tucker":
        _lora(sd, "lora_unet_down_blocks_0_resnets_0_conv1", 320, 320, k=(1, 1))
        sd["lora_unet_down_blocks_0_resnets_0_conv1.lora_mid.weight"] = torch.randn(4, 4, 3, 3)
        return "sd15", sd, "cannot load LoCon+Tucker", ValueError
    if name == "loha":
        for i in (1, 2):
            sd[f"{DQ}.hada_w{i}_a"], sd[f"{DQ}.hada_w{i}_b"] = torch.randn(640, 4), torch.randn(4, 640)
        sd[f"{DQ}.alpha"] = torch.tensor(2.0)
        return "sd15", sd, "cannot load LoHa", ValueError
    if name == "lokr":
        sd[f"{DQ}.lokr_w1"], sd[f"{DQ}.lokr_w2"] = torch.randn(20, 20), torch.randn(32, 32)
        return "sd15", sd, "cannot load LoKr", ValueError
    if name == "kohya-lora_A-lora_B":
        _lora(sd, DQ, 640, 640, up="lora_B.weight", down="lora_A.weight")
        return "sd15", sd, "not been correctly renamed", ValueError
    if name == "dora":
        _lora(sd, DQ, 640, 640)["%s.dora_scale" % DQ] = torch.rand(1, 640)
        return "sd15", sd, {DQ}, {"unet": {"down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"}}
    if name == "sd15-conv-time":
        _lora(sd, "lora_unet_conv_in", 320, 4, k=(3, 3))
        _lora(sd, "lora_unet_time_embedding_linear_1", 1280, 320)
        _lora(sd, "lora_unet_up_blocks_0_upsamplers_0_conv", 1280, 1280, k=(3, 3))
        return "sd15", sd, set(group_modules(sd)), {
            "unet": {"conv_in", "time_embedding.linear_1", "up_blocks.0.upsamplers.0.conv"}
        }
    if name == "add-embedding-with-others":  # diffusers-named add_embedding: dropped (its name converts wrongly)
        _lora(_lora(sd, "lora_unet_add_embedding_linear_1", 1280, 2816), Q, 640, 640)
        return "sdxl", sd, {Q}, {"unet": {"down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"}}
    if name == "add-embedding-alone":
        _lora(sd, "lora_unet_add_embedding_linear_1", 1280, 2816)
        return "sdxl", sd, "NoMatchingPeftModuleError", ValueError
    if name == "te2-projection-alone":
        _lora(sd, "lora_te2_text_projection", 1280, 1280)
        return "sdxl", sd, "Could not automatically infer state dict type", ValueError
    if name == "sgm-names":
        for nm, o, i, k in (
            ("input_blocks_1_0_in_layers_2", 320, 320, (3, 3)),
            ("output_blocks_2_2_conv", 1280, 1280, (3, 3)),
            ("input_blocks_3_0_op", 320, 320, (3, 3)),
            ("label_emb_0_0", 1280, 2816, None),
            ("middle_block_1_transformer_blocks_9_ff_net_2", 1280, 5120, None),
            ("out_2", 4, 320, (3, 3)),
        ):
            _lora(sd, "lora_unet_" + nm, o, i, k=k)
        _lora(sd, "lora_te2_text_projection", 1280, 1280)
        _lora(sd, "lora_te2_text_model_encoder_layers_0_mlp_fc1", 5120, 1280)
        return "sdxl", sd, set(group_modules(sd)), {
            "unet": {"down_blocks.0.resnets.0.conv1", "up_blocks.0.upsamplers.0.conv", "add_embedding.linear_1",
                     "down_blocks.0.downsamplers.0.conv", "mid_block.attentions.0.transformer_blocks.9.ff.net.2",
                     "conv_out"},
            "text_encoder_2": {"text_projection", "text_model.encoder.layers.0.mlp.fc1"},
        }  # fmt: skip
    if name == "mixed-sgm-and-diffusers":  # SGM keys are discarded next to diffusers-named ones
        _lora(_lora(sd, Q, 640, 640), DQ.replace("to_q", "to_k"), 640, 640)
        return "sdxl", sd, {DQ.replace("to_q", "to_k")}, {
            "unet": {"down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k"}
        }
    raise KeyError(name)


CASES = [
    "te-qkv-and-mlp", "te-qkv-only", "te-qkvo", "tucker", "loha", "lokr", "kohya-lora_A-lora_B", "dora",
    "sd15-conv-time", "add-embedding-with-others", "add-embedding-alone", "te2-projection-alone", "sgm-names",
    "mixed-sgm-and-diffusers",
]  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_static_rules_agree_with_the_real_loader(name):
    family, sd, expect_static, expect_real = _case(name)
    res = diffusers_rules.check(sd, family)
    if isinstance(expect_static, str):
        assert not res.loads and expect_static in res.reason
        with pytest.raises(expect_real):
            diffusers_rules.load_with_diffusers(sd, family)
        return
    assert res.loads, res.reason
    assert res.loaded == expect_static
    assert set(res.dropped) == set(group_modules(sd)) - expect_static
    real = diffusers_rules.load_with_diffusers(sd, family)
    assert {k: v for k, v in real.items() if v} == expect_real


def test_reasons_for_dropped_modules():
    _, sd, _, _ = _case("te-qkv-and-mlp")
    assert all("out_proj" in why for why in diffusers_rules.check(sd, "sd15").dropped.values())
    _, sd, _, _ = _case("mixed-sgm-and-diffusers")
    assert "SGM-named" in diffusers_rules.check(sd, "sdxl").dropped[Q]
    _, sd, _, _ = _case("dora")
    assert any("dora_scale" in n for n in diffusers_rules.check(sd, "sd15").notes)


def test_full_size_sd15_kohya_lora_loads_completely():
    sd = {k: torch.zeros_like(v) if v.dim() else v for k, v in make_file("sd15", "lora").items()}
    res = diffusers_rules.check(sd, "sd15")
    assert res.loads and res.dropped == {} and res.loaded == set(group_modules(sd))
    real = diffusers_rules.load_with_diffusers(sd, "sd15")
    assert len(real["unet"]) + len(real["text_encoder"]) == len(res.loaded) == 302
