"""A kohya and a diffusers FLUX file made from random LoRAs on every targetable module, read by the ComfyUI and
diffusers models on the full-size FLUX.1 architecture (meta device), and their ΔW on a few modules."""

import pytest
import torch

from loraforge.formats.consumers import flux as consumer
from loraforge.formats.flux_lora import flux_kohya_state_dict

from .flux_helpers import delta, random_flux_lora

EMBEDDERS = {"context_embedder", "x_embedder", "proj_out", "norm_out.linear"} | {
    f"time_text_embed.{e}.linear_{i}" for e in ("guidance_embedder", "text_embedder", "timestep_embedder")
    for i in (1, 2)}


@pytest.fixture(scope="module")
def modules():
    return random_flux_lora(seed=3)


@pytest.fixture(scope="module")
def by_path(modules):
    return {m.target: m for m in modules}


@pytest.fixture(scope="module")
def kohya(modules):
    return flux_kohya_state_dict(modules)


@pytest.fixture(scope="module")
def peft(modules):
    sd = {}
    for m in modules:
        prefix = {"unet": "transformer", "te1": "text_encoder.text_model", "te2": "text_encoder_2"}[m.part]
        sd[f"{prefix}.{m.path}.lora_A.weight"] = m.tensors["lora_down.weight"]
        sd[f"{prefix}.{m.path}.lora_B.weight"] = m.tensors["lora_up.weight"]
        sd[f"{prefix}.{m.path}.alpha"] = torch.tensor(m.alpha)
    return sd


def test_comfyui_loads_every_kohya_key_and_reproduces_delta(kohya, by_path):
    sd, result = consumer.comfy_load(kohya)
    assert result.fatal is None and result.not_loaded == [] and result.dropped == {}
    assert len(result.applied) == len({k.split(".")[0] for k in kohya})
    shapes = consumer.comfy_model_keys()
    qkv = "diffusion_model.double_blocks.2.img_attn.qkv.weight"
    want = torch.cat([delta(by_path[("unet", f"transformer_blocks.2.attn.to_{x}")]) for x in "qkv"])
    assert torch.allclose(consumer.comfy_delta(sd, result, qkv, shapes[qkv]), want, atol=1e-6)
    final = "diffusion_model.final_layer.adaLN_modulation.1.weight"
    want = delta(by_path[("unet", "norm_out.linear")]).roll(3072, dims=0)  # BFL (shift, scale)
    assert torch.allclose(consumer.comfy_delta(sd, result, final, shapes[final]), want, atol=1e-6)
    for key, target in (("clip_l.transformer.text_model.encoder.layers.3.self_attn.v_proj.weight",
                         ("te1", "encoder.layers.3.self_attn.v_proj")),
                        ("t5xxl.transformer.encoder.block.5.layer.0.SelfAttention.o.weight",
                         ("te2", "encoder.block.5.layer.0.SelfAttention.o"))):
        assert torch.allclose(consumer.comfy_delta(sd, result, key, shapes[key]), delta(by_path[target]), atol=1e-6)


def test_comfyui_loads_the_diffusers_file_into_slices(peft, by_path):
    sd, result = consumer.comfy_load(peft)
    assert result.fatal is None
    # ComfyUI has no rule for diffusers-named T5 (`text_encoder_2.`) LoRA: only those keys stay unloaded
    assert result.not_loaded and all(k.startswith("text_encoder_2.") for k in result.not_loaded)
    shapes = consumer.comfy_model_keys()
    key = "diffusion_model.single_blocks.4.linear1.weight"
    want = torch.cat([delta(by_path[("unet", f"single_transformer_blocks.4.attn.to_{x}")]) for x in "qkv"]
                     + [delta(by_path[("unet", "single_transformer_blocks.4.proj_mlp")])])
    assert torch.allclose(consumer.comfy_delta(sd, result, key, shapes[key]), want, atol=1e-6)


def test_diffusers_loads_kohya_blocks_and_clip_and_reproduces_delta(kohya, modules):
    result = consumer.diffusers_check(kohya)
    assert result.loads, result.reason
    want = {("transformer", m.path) for m in modules if m.part == "unet" and m.path not in EMBEDDERS}
    want |= {("text_encoder", "text_model." + m.path) for m in modules if m.part == "te1"}
    assert set(result.loaded.values()) == want
    # diffusers 0.42.1 converts kohya embedder / final-layer modules without the `transformer.` prefix, and its
    # loader then filters them out; T5 (lora_te3_) keys are not converted at all
    assert {k.split(".lora")[0] for k in result.dropped} == EMBEDDERS
    for path in ("transformer_blocks.6.attn.add_k_proj", "single_transformer_blocks.9.proj_mlp"):
        target = f"transformer.{path}"
        m = next(x for x in modules if x.target == ("unet", path))
        assert torch.allclose(consumer.diffusers_delta(result, target), delta(m), atol=1e-6)


def test_diffusers_loads_every_transformer_module_of_the_peft_file(peft, modules):
    result = consumer.diffusers_check(peft)
    assert result.loads, result.reason
    assert {p for c, p in result.loaded.values() if c == "transformer"} == \
        {m.path for m in modules if m.part == "unet"}
    m = next(x for x in modules if x.target == ("unet", "transformer_blocks.1.attn.to_v"))
    assert torch.allclose(consumer.diffusers_delta(result, "transformer.transformer_blocks.1.attn.to_v"),
                          delta(m), atol=1e-6)


def test_check_state_dict_reports_flux_consumers(kohya, modules):
    from loraforge.formats.check import check_state_dict
    from loraforge.formats.flux_lora import flux_metadata

    report = check_state_dict(kohya, metadata=flux_metadata())
    assert report.family == "flux" and report.errors == []
    total = len({k.split(".")[0] for k in kohya})
    comfy, forge, diffusers = (report.consumers[k] for k in ("comfyui", "a1111", "diffusers"))
    assert comfy.loads and comfy.applied == total and comfy.unmatched == [] and comfy.skipped == {}
    assert forge.consumer == "Forge" and forge.applied == total
    t5 = sum(1 for m in modules if m.part == "te2")
    assert diffusers.loads and diffusers.applied == total - len(EMBEDDERS) - t5
    assert "lora_unet_final_layer_adaLN_modulation_1" in diffusers.skipped
    assert "lora_te3_encoder_block_0_layer_0_SelfAttention_q" in diffusers.skipped
    assert "ComfyUI" in report.summary()
