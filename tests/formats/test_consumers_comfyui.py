"""ComfyUI v0.19.3 model: unet_to_diffusers derivation, key map, acceptance of key spellings, loading rules, and
100 % mapping of full-size kohya files for every adapter (formats.md §2.1, §2.3, §3)."""

from __future__ import annotations

import pytest
import torch
from .consumer_fixtures import ALGOS, make_file, te_targets, unet_targets

from loraforge.formats.consumers import comfyui
from loraforge.formats.consumers.keys import group_modules
from loraforge.formats.consumers.tables import UNET_CONFIGS, family_tables, unet_to_diffusers


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_unet_to_diffusers_covers_every_weight_of_the_real_unet(family):
    t = family_tables(family)  # raises if a diffusers parameter has no LDM name
    assert len(t.unet_ldm) == len(t.unet_diffusers)
    params = sum(torch.Size(s).numel() for s in t.unet_diffusers.values())
    assert params == {"sd15": 859_520_964, "sd2": 865_910_724, "sdxl": 2_567_463_684}[family]


def test_unet_to_diffusers_known_entries():
    sd15 = unet_to_diffusers(UNET_CONFIGS["sd15"])
    sdxl = unet_to_diffusers(UNET_CONFIGS["sdxl"])
    assert sd15["down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"] == (
        "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
    )
    assert sd15["up_blocks.0.upsamplers.0.conv.weight"] == "output_blocks.2.1.conv.weight"
    assert sd15["up_blocks.1.upsamplers.0.conv.weight"] == "output_blocks.5.2.conv.weight"
    assert sd15["mid_block.resnets.1.time_emb_proj.weight"] == "middle_block.2.emb_layers.1.weight"
    assert sdxl["up_blocks.0.upsamplers.0.conv.weight"] == "output_blocks.2.2.conv.weight"
    assert sdxl["down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2.weight"] == (
        "input_blocks.8.1.transformer_blocks.9.ff.net.2.weight"
    )
    assert sdxl["add_embedding.linear_2.weight"] == "label_emb.0.2.weight"
    assert sdxl["up_blocks.2.resnets.2.conv_shortcut.weight"] == "output_blocks.8.0.skip_connection.weight"


@pytest.mark.parametrize("family,names,targets", [("sd15", 3021, 782), ("sdxl", 7861, 1961)])
def test_key_map_size_matches_the_dump_of_the_real_code(family, names, targets):
    """formats.md §2.1: the real ComfyUI code, given the prototype's fake model, maps 3,021 names -> 782 targets
    (SD1.5) and 7,861 -> 1,961 (SDXL). Same fake model here: every unet_to_diffusers value + CLIP layer linears."""
    sdk = {"diffusion_model." + v: None for v in unet_to_diffusers(UNET_CONFIGS[family]).values()}
    clips = [("clip_l", 12)] + ([("clip_g", 32)] if family == "sdxl" else [])
    for clip, layers in clips:
        for layer in range(layers):
            for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1",
                      "mlp.fc2"):  # fmt: skip
                for p in ("weight", "bias"):
                    sdk[f"{clip}.transformer.text_model.encoder.layers.{layer}.{m}.{p}"] = None
    if family == "sdxl":
        sdk["clip_g.transformer.text_projection.weight"] = None
    key_map = comfyui._unet_key_map(family_tables(family), sdk)
    key_map.update(comfyui._clip_key_map(family, sdk))
    assert (len(key_map), len(set(key_map.values()))) == (names, targets)


def _lora(sd, module, out=8, inn=8, up="lora_up.weight", down="lora_down.weight"):
    sd[f"{module}.{down}"] = torch.zeros(4, inn)
    sd[f"{module}.{up}"] = torch.zeros(out, 4)
    sd[f"{module}.alpha"] = torch.tensor(4.0)


ATT = "down_blocks.1.attentions.0.transformer_blocks.0.attn2"
MATRIX = [  # formats.md §2.3, ComfyUI column: (family, module, up/down names, accepted)
    ("sd15", f"lora_unet_{ATT}_to_k".replace(".", "_"), None, True),
    ("sd15", "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k", None, True),
    ("sd15", "lora_unet_up_blocks_0_upsamplers_0_conv", None, True),
    ("sd15", "lora_unet_conv_in", None, True),
    ("sd15", "lora_unet_time_embedding_linear_1", None, True),
    ("sd15", "lora_te_text_model_encoder_layers_0_self_attn_q_proj", None, True),
    ("sd15", "lora_te1_text_model_encoder_layers_0_self_attn_q_proj", None, True),
    ("sd15", f"lora_unet_{ATT}_to_k".replace(".", "_"), ("lora_B.weight", "lora_A.weight"), True),
    ("sd15", f"unet.{ATT}.to_k", ("lora_B.weight", "lora_A.weight"), False),
    ("sd15", f"unet.{ATT}.to_k", ("lora.up.weight", "lora.down.weight"), False),
    ("sd15", "unet.down_blocks.1.attentions.0.proj_in", ("lora_B.weight", "lora_A.weight"), True),
    ("sd15", "unet.down_blocks.1.attentions.0.transformer_blocks.0.ff.net.2", ("lora.up.weight", "lora.down.weight"),
     True),  # fmt: skip
    ("sd15", f"unet.{ATT}.processor.to_k", ("_lora.up.weight", "_lora.down.weight"), True),
    ("sd15", "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
     ("lora_linear_layer.up.weight", "lora_linear_layer.down.weight"), True),  # fmt: skip
    ("sd15", f"lycoris_{ATT}_to_k".replace(".", "_"), None, True),
    ("sdxl", "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", None, True),
    ("sdxl", "lora_unet_output_blocks_2_2_conv", None, True),
    ("sdxl", "lora_unet_label_emb_0_0", None, True),
    ("sdxl", f"lora_unet_{ATT}_to_k".replace(".", "_"), None, True),
    ("sdxl", "lora_unet_up_blocks_0_upsamplers_0_conv", None, True),
    ("sdxl", "lora_unet_add_embedding_linear_1", None, True),
    ("sdxl", "lora_te1_text_model_encoder_layers_0_self_attn_q_proj", None, True),
    ("sdxl", "lora_te2_text_model_encoder_layers_0_self_attn_q_proj", None, True),
    ("sdxl", "lora_te2_text_model_encoder_layers_0_mlp_fc1", None, True),
    ("sdxl", "lora_te2_text_projection", None, True),
]


@pytest.mark.parametrize("family,module,names,accepted", MATRIX)
def test_acceptance_matrix(family, module, names, accepted):
    sd = {}
    up, down = names or ("lora_up.weight", "lora_down.weight")
    if up.startswith("_lora."):
        sd[module + up], sd[module + down] = torch.zeros(8, 4), torch.zeros(4, 8)
    else:
        _lora(sd, module, up=up, down=down)
        sd.pop(f"{module}.alpha")
    res = comfyui.load(sd, family)
    assert res.fatal is None
    assert (module in res.applied) is accepted, (res.applied, res.dropped, res.not_loaded)
    assert (res.not_loaded == []) is accepted


def test_patch_for_a_weight_the_model_lacks_is_dropped_silently():
    sd = {}
    _lora(sd, "lora_unet_down_blocks_3_downsamplers_0_conv")  # SD 1.x has no downsampler in its last down block
    res = comfyui.load(sd, "sd15")
    assert res.not_loaded == [] and res.applied == {}
    assert "not in the sd15 model" in res.dropped["lora_unet_down_blocks_3_downsamplers_0_conv"]


def test_two_names_for_one_weight_last_wins():
    sd = {}
    _lora(sd, "lora_te_text_model_encoder_layers_0_self_attn_q_proj")
    _lora(sd, "lora_te1_text_model_encoder_layers_0_self_attn_q_proj")
    res = comfyui.load(sd, "sd15")
    assert len(res.applied) == 1 and len(res.dropped) == 1
    assert next(iter(res.dropped.values())).startswith("overwritten by")


def test_fatal_load_errors():
    sd = {"lora_unet_conv_in.lora_up.weight": torch.zeros(320, 4, 1, 1)}  # no lora_down: KeyError in load_lora
    assert "KeyError" in comfyui.load(sd, "sd15").fatal
    sd = {}
    _lora(sd, "lora_unet_conv_in", 320, 36)
    sd["lora_unet_conv_in.alpha"] = torch.tensor([4.0, 4.0])  # .item() raises
    assert ".item()" in comfyui.load(sd, "sd15").fatal


def test_ia3_is_not_loaded():
    module = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_k"
    sd = {f"{module}.weight": torch.ones(640), f"{module}.on_input": torch.tensor(0)}
    res = comfyui.load(sd, "sd15")
    assert res.applied == {} and sorted(res.not_loaded) == sorted(sd)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("algo", ALGOS)
def test_full_size_files_map_completely(family, algo):
    """Every adapter on full-size SD 1.5 / SDXL key names: 100 % of UNet and text-encoder modules reach a weight."""
    sd = make_file(family, algo, projection=family == "sdxl")
    res = comfyui.load(sd, family)
    assert res.fatal is None and res.not_loaded == [] and res.dropped == {}
    modules = set(group_modules(sd))
    unet = {m for m in modules if m.startswith("lora_unet_")}
    te = modules - unet
    assert unet and te
    assert unet <= set(res.applied) and te <= set(res.applied)
    assert {p.kind for p in res.applied.values()} == {"lora": {"lora"}}.get(algo, {_kind(algo)})


def _kind(algo):
    return {"loha": "loha", "lokr": "lokr"}.get(algo, "lora")


def test_sdxl_sgm_names_map_completely():
    sd = make_file("sdxl", "locon", naming="sgm", projection=True)
    res = comfyui.load(sd, "sdxl")
    assert res.not_loaded == [] and len(res.applied) == len(group_modules(sd))
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in res.applied
    assert "lora_unet_output_blocks_2_2_conv" in res.applied and "lora_unet_label_emb_0_0" in res.applied


def test_target_shapes_come_from_the_full_size_tables():
    keys = comfyui.model_keys("sdxl")
    assert keys["diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"] == (640, 2048)
    assert keys["clip_g.transformer.text_projection.weight"] == (1280, 1280)
    assert len(unet_targets("sd15", "attn")) == 192 and len(te_targets("sd15")) == 72
    assert len(unet_targets("sdxl", "attn")) == 722 and len(te_targets("sdxl")) == 264
