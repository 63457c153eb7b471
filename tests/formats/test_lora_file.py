"""The LoRA-file reader and ΔW math: every layout resolves to the model's modules (full-size meta models), unknown
keys are reported, wrong families and shapes raise, and ΔW equals the LyCORIS training forward and ComfyUI."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch

from loraforge.formats.check import consumer_merged_delta
from loraforge.formats.lora_file import ModelTree, bind, read_lora_state_dict
from loraforge.adapters import module_delta
from loraforge.errors import FamilyMismatchError, MissingKeyError, ShapeMismatchError

from .consumer_fixtures import CONV, DORA_IN, DORA_OUT, LIN, lycoris_file, lycoris_reference, make_file, rel_err

CASES = [  # (id, algo, layer, rank, kwargs)
    ("lora-linear", "locon", LIN, 4, {}),
    ("locon-conv3x3", "locon", CONV, 4, {}),
    ("locon-tucker", "locon", CONV, 4, {"use_tucker": True}),
    ("loha-conv", "loha", CONV, 4, {}),
    ("loha-tucker", "loha", CONV, 4, {"use_tucker": True}),
    ("lokr-linear", "lokr", LIN, 2, {}),
    ("lokr-both-factored", "lokr", LIN, 2, {"decompose_both": True}),
    ("lokr-full", "lokr", LIN, 4, {}),
    ("lokr-conv-tucker", "lokr", CONV, 2, {"use_tucker": True}),
    ("dora-in-conv", "locon", CONV, 4, DORA_IN),
    ("dora-in-loha", "loha", CONV, 4, DORA_IN),
    ("dora-out-linear", "locon", LIN, 4, DORA_OUT),
    ("dora-out-lokr", "lokr", LIN, 2, DORA_OUT),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_delta_equals_lycoris_forward_and_comfyui(case):
    case_id, algo, layer, rank, kw = case
    layer = copy.deepcopy(layer)
    tensors, reference, _ = lycoris_reference(algo, layer, rank=rank, alpha=rank / 2, **kw)
    W = layer.weight.detach().clone()
    module = read_lora_state_dict({f"lora_unet_x.{k}": v for k, v in tensors.items()}).modules["lora_unet_x"]
    delta = module_delta(module, W.shape, W)
    assert rel_err(delta, reference) < 1e-5
    if case_id == "lokr-conv-tucker":
        return  # ComfyUI cannot rebuild it (non-contiguous kron input): it logs an error; we can
    comfy = consumer_merged_delta("comfyui", W, tensors)
    if "dora-out" in case_id:
        assert rel_err(delta, comfy) > 0.05  # ComfyUI's output-axis DoRA normalises by ‖W‖ (PR #15458)
    else:
        assert rel_err(delta, comfy) < 1e-5


@pytest.mark.parametrize("family,naming,algo", [
    ("sd15", "diffusers", "locon"),  # kohya SD 1.5 names (sd-scripts, LyCORIS)
    ("sd15", "sgm", "loha"),  # SD 1.x LDM names (lora_unet_input_blocks_4_1_...)
    ("sdxl", "sgm", "lokr"),  # kohya SDXL SGM names
    ("sdxl", "diffusers", "lora"),  # diffusers-named SDXL kohya file
])
def test_full_size_kohya_names_resolve(family, naming, algo):
    sd = make_file(family, algo, naming=naming, projection=family == "sdxl")
    lora = bind(read_lora_state_dict(sd), ModelTree.for_family(family))
    assert lora.unknown == {}
    assert lora.family == family
    parts = {m.part for m in lora.modules.values()}
    assert parts == ({"unet", "te1", "te2"} if family == "sdxl" else {"unet", "te1"})
    mods = lora.by_target()
    if family == "sdxl":
        assert ("te2", "text_projection") in mods  # lora_te2_text_projection
        assert ("te2", "text_model.encoder.layers.31.mlp.fc2") in mods
        assert ("unet", "down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k") in mods
        assert ("te1", "encoder.layers.0.self_attn.q_proj") in mods  # transformers 5: no text_model. in CLIP-L
    else:
        assert ("unet", "up_blocks.3.attentions.2.proj_out") in mods


def test_lycoris_written_file_resolves():
    sd = lycoris_file("sdxl", "locon", use_tucker=True)
    lora = bind(read_lora_state_dict(sd), ModelTree.for_family("sdxl"))
    assert lora.unknown == {} and len(lora.modules) == len({k.split(".")[0] for k in sd})


def test_diffusers_layouts_and_adapter_metadata_alpha():
    tree = ModelTree.for_family("sd15")
    attn = "down_blocks.0.attentions.0.transformer_blocks.0"
    sd = {
        f"unet.{attn}.attn1.to_q.lora_A.weight": torch.randn(4, 320),
        f"unet.{attn}.attn1.to_q.lora_B.weight": torch.randn(320, 4),
        f"unet.{attn}.attn2.to_k.lora.down.weight": torch.randn(8, 768),
        f"unet.{attn}.attn2.to_k.lora.up.weight": torch.randn(320, 8),
        f"unet.{attn}.attn1.processor.to_out_lora.down.weight": torch.randn(4, 320),  # old attention processors
        f"unet.{attn}.attn1.processor.to_out_lora.up.weight": torch.randn(320, 4),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight": torch.randn(4, 768),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.up.weight": torch.randn(768, 4),
    }
    meta = {"lora_adapter_metadata": json.dumps({
        "unet.r": 4, "unet.lora_alpha": 2, "unet.alpha_pattern": {f"{attn}.attn2.to_k": 16}, "unet.rank_pattern": {},
    })}
    lora = bind(read_lora_state_dict(sd, meta), tree)
    assert lora.unknown == {} and lora.style == "diffusers"
    mods = lora.by_target()
    assert mods[("unet", f"{attn}.attn1.to_q")].scale == 0.5
    assert mods[("unet", f"{attn}.attn2.to_k")].scale == 2.0  # alpha_pattern 16 / rank 8
    assert ("unet", f"{attn}.attn1.to_out.0") in mods
    te = mods[("te1", "encoder.layers.0.self_attn.q_proj")]
    assert te.alpha is None and te.scale == 1.0  # no text_encoder config: diffusers' alpha = rank


def test_unknown_keys_are_reported_never_dropped(caplog):
    sd = {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(4, 320, 1, 1),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.randn(320, 4, 1, 1),
        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0),
        "lora_unet_down_blocks_0_attentions_9_proj_in.lora_down.weight": torch.randn(4, 320, 1, 1),  # no such block
        "lora_unet_down_blocks_0_attentions_9_proj_in.lora_up.weight": torch.randn(320, 4, 1, 1),
        "lora_unet_down_blocks_0_attentions_0_proj_out.lora_down.weight": torch.randn(4, 320, 1, 1),  # no up
        "lora_unet_conv_in.lora_down.wieght": torch.randn(4, 4, 3, 3),  # typo in the suffix
        "lora_unet_conv_in.ia3_thing": torch.randn(3),
        "bundle_emb.sks.string_to_param.*": torch.randn(1, 768),
    }
    lora = bind(read_lora_state_dict(sd), ModelTree.for_family("sd15"))
    assert list(lora.modules) == ["lora_unet_down_blocks_0_attentions_0_proj_in"]
    reasons = lora.unknown
    assert "no module" in reasons["lora_unet_down_blocks_0_attentions_9_proj_in.lora_up.weight"]
    assert "incomplete" in reasons["lora_unet_down_blocks_0_attentions_0_proj_out.lora_down.weight"]
    assert reasons["lora_unet_conv_in.lora_down.wieght"] == "unknown tensor suffix"
    assert "bundled embedding" in reasons["bundle_emb.sks.string_to_param.*"]
    assert len(reasons) == 6
    with pytest.raises(MissingKeyError, match="6 keys would not be applied"):
        lora.require_known()
    with caplog.at_level(logging.WARNING, logger="loraforge"):
        lora.require_known(skip_unknown=True)
    assert "6 keys not applied" in caplog.text


def test_wrong_family_and_shape_mismatch_raise():
    sdxl = {k: v for k, v in make_file("sdxl", "lora", unet_scope="attn").items() if k.startswith("lora_te1_")}
    with pytest.raises(FamilyMismatchError, match="SDXL LoRA .* the model is SD 1.x"):
        bind(read_lora_state_dict(sdxl), ModelTree.for_family("sd15"))
    bad = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.randn(4, 640),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.randn(320, 4),
    }
    with pytest.raises(ShapeMismatchError, match=r"attn1_to_q \(ΔW \(320, 640\) vs weight \(320, 320\)\)"):
        bind(read_lora_state_dict(bad), ModelTree.for_family("sd15"))
