"""FLUX.1 LoRA files: the kohya writer (exact fusion) and the reader of every FLUX layout."""

import pytest
import torch

from loraforge.adapters import AdapterModule
from loraforge.formats.flux_lora import (
    flux_kohya_state_dict,
    flux_metadata,
    fuse,
    read_flux_lora,
)
from loraforge.families.flux import transformer_modules
from loraforge.formats.lora_family import flux_lora_evidence

from .flux_helpers import delta, random_flux_lora

SAMPLE = ("transformer_blocks.3.attn.to_k", "transformer_blocks.3.attn.add_v_proj", "norm_out.linear",
          "single_transformer_blocks.7.proj_mlp", "single_transformer_blocks.7.attn.to_q", "proj_out",
          "transformer_blocks.0.attn.to_add_out", "encoder.layers.2.self_attn.q_proj",
          "encoder.block.1.layer.1.DenseReluDense.wi_0")


@pytest.fixture(scope="module")
def modules():
    return random_flux_lora()


@pytest.fixture(scope="module")
def kohya(modules):
    return flux_kohya_state_dict(modules)


def test_kohya_names_are_sd_scripts(kohya):
    names = {k.rsplit(".", 2)[0] if k.endswith("weight") else k.rsplit(".", 1)[0] for k in kohya}
    assert "lora_unet_double_blocks_0_img_attn_qkv" in names
    assert "lora_unet_double_blocks_18_txt_attn_qkv" in names
    assert "lora_unet_single_blocks_37_linear1" in names
    assert "lora_unet_final_layer_adaLN_modulation_1" in names
    assert "lora_unet_guidance_in_in_layer" in names
    assert "lora_te1_text_model_encoder_layers_11_self_attn_out_proj" in names
    assert "lora_te3_encoder_block_23_layer_1_DenseReluDense_wo" in names
    assert not any("to_q" in n or "transformer_blocks" in n for n in names)
    # 19 x 10 + 38 x 3 original layers + 10 embedders / final layers, 72 CLIP-L and 24 x 7 T5 modules
    assert len(names) == 19 * 10 + 38 * 3 + 10 + 72 + 24 * 7


def test_kohya_round_trip_reproduces_every_delta(modules, kohya):
    back = read_flux_lora(kohya)
    assert back.layout == "kohya" and back.unknown == {}
    targets = back.by_target()
    assert set(targets) == {m.target for m in modules}
    for m in modules:
        if m.path in SAMPLE:
            assert torch.allclose(delta(targets[m.target]), delta(m), atol=1e-6), m.path


def test_fusion_is_block_diagonal_with_one_alpha():
    g = torch.Generator().manual_seed(1)
    fused = transformer_modules()["double_blocks.0.img_attn.qkv"]
    parts = {}
    for i, name in enumerate(p[0] for p in fused.parts):
        parts[name] = AdapterModule("", {"lora_down.weight": torch.randn(2, 3072, generator=g),
                                         "lora_up.weight": torch.randn(3072, 2, generator=g)}, 4.0, part="unet",
                                    path=name)
    m = fuse(fused, parts)
    assert m.rank == 6 and m.alpha == 12.0  # same scale 2 for every part: alpha = 2 x total rank
    up = m.tensors["lora_up.weight"]
    assert torch.count_nonzero(up[:3072, 2:]) == 0 and torch.count_nonzero(up[3072:6144, :2]) == 0
    del parts["transformer_blocks.0.attn.to_k"]  # a layer the network left alone: zero rows
    m = fuse(fused, parts)
    assert torch.count_nonzero(delta(m)[3072:6144]) == 0
    assert torch.allclose(delta(m)[6144:], delta(parts["transformer_blocks.0.attn.to_v"]), atol=1e-5)


def test_loha_and_dora_on_fused_layers_are_written_with_lycoris_names_comfyui_slices():
    """A LoHa or DoRA update of to_q alone has no exact form on the fused qkv / linear1 layer: the kohya file holds
    such parts under LyCORIS' diffusers names (`lycoris_single_transformer_blocks_0_attn_to_q`, as SimpleTuner
    writes), which ComfyUI applies to their rows of the fused weight; plain LoRA parts are still fused."""
    from loraforge.formats.consumers import flux as consumer

    g = torch.Generator().manual_seed(5)
    loha = AdapterModule("", {k: torch.randn(3072 if k.endswith("_a") else 2, 2 if k.endswith("_a") else 3072,
                                             generator=g) * 0.1
                              for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")}, 1.0, part="unet",
                         path="single_transformer_blocks.0.attn.to_k")
    dora = AdapterModule("", {"lora_down.weight": torch.randn(2, 3072, generator=g) * 0.1,
                              "lora_up.weight": torch.randn(3072, 2, generator=g) * 0.1,
                              "dora_scale": torch.ones(1, 3072)}, 2.0, part="unet",
                         path="transformer_blocks.3.attn.to_v")
    lora = next(m for m in random_flux_lora(seed=2, text_encoders=False)
                if m.path == "transformer_blocks.3.attn.to_q")
    sd = flux_kohya_state_dict([loha, dora, lora])
    names = {k.split(".")[0] for k in sd}
    assert names == {"lycoris_single_transformer_blocks_0_attn_to_k", "lycoris_transformer_blocks_3_attn_to_v",
                     "lycoris_transformer_blocks_3_attn_to_q"}  # a fused layer with a DoRA part: all its parts
    converted, result = consumer.comfy_load(sd)
    assert result.fatal is None and result.not_loaded == [] and len(result.applied) == 3
    shapes = consumer.comfy_model_keys()
    key = "diffusion_model.single_blocks.0.linear1.weight"
    want = torch.zeros(shapes[key])
    want[3072:6144] = delta(loha)  # to_k: rows [h, 2h) of linear1
    torch.testing.assert_close(consumer.comfy_delta(converted, result, key, shapes[key]), want, atol=1e-5, rtol=1e-4)
    back = read_flux_lora(sd)  # and loraforge reads the file back onto the same modules
    assert {m.path for m in back.modules.values()} == {loha.path, dora.path, lora.path}
    # a one-to-one layer keeps its LoHa under the kohya name
    loha.path = "single_transformer_blocks.0.proj_out"
    loha.tensors = {k: torch.ones(3072 if k.endswith("_a") else 2, 2 if k.endswith("_a") else 15360)
                    for k in loha.tensors}
    assert "lora_unet_single_blocks_0_linear2.hada_w1_a" in flux_kohya_state_dict([loha])


def _subset(modules):
    """A few modules: parts of the fused layers, a one-to-one layer and the swapped final modulation."""
    paths = ("transformer_blocks.1.attn.to_q", "transformer_blocks.1.attn.add_k_proj", "transformer_blocks.1.attn.to_out.0",
             "single_transformer_blocks.2.proj_mlp", "single_transformer_blocks.2.attn.to_v", "norm_out.linear")
    return [m for m in modules if m.part == "unet" and m.path in paths]


def test_comfyui_native_and_peft_spelling_read_like_kohya(modules, kohya):
    native = {}
    for k, v in kohya.items():
        if k.startswith(("lora_unet_double_blocks_1_", "lora_unet_single_blocks_2_", "lora_unet_final_layer_ada")):
            native["diffusion_model." + _original(k)] = v
    back = read_flux_lora(native)
    assert back.layout == "comfyui" and back.unknown == {}
    targets = back.by_target()
    for m in _subset(modules):
        assert torch.allclose(delta(targets[m.target]), delta(m), atol=1e-6), m.path


def _original(key: str) -> str:
    """`lora_unet_double_blocks_1_img_attn_qkv.lora_down.weight` -> `double_blocks.1.img_attn.qkv.lora_A.weight`."""
    module, _, suffix = key.partition(".")
    table = {o.replace(".", "_"): o for o in transformer_modules()}
    suffix = suffix.replace("lora_down.weight", "lora_A.weight").replace("lora_up.weight", "lora_B.weight")
    return f"{table[module.removeprefix('lora_unet_')]}.{suffix}"


def test_diffusers_file_with_adapter_metadata_alpha(modules):
    import json

    subset = _subset(modules)
    sd = {}
    for m in subset:
        sd[f"transformer.{m.path}.lora_A.weight"] = m.tensors["lora_down.weight"]
        sd[f"transformer.{m.path}.lora_B.weight"] = m.tensors["lora_up.weight"]
    alphas = {m.path: m.alpha for m in subset}
    meta = {"lora_adapter_metadata": json.dumps({"transformer.r": 1, "transformer.lora_alpha": 1.0,
                                                 "transformer.alpha_pattern": alphas})}
    back = read_flux_lora(sd, meta)
    assert back.layout == "diffusers" and back.unknown == {}
    targets = back.by_target()
    for m in subset:
        assert torch.allclose(delta(targets[m.target]), delta(m), atol=1e-6), m.path


def test_xlabs_file():
    g = torch.Generator().manual_seed(2)
    sd = {
        "double_blocks.4.processor.qkv_lora1.down.weight": torch.randn(2, 3072, generator=g),
        "double_blocks.4.processor.qkv_lora1.up.weight": torch.randn(9216, 2, generator=g),
        "double_blocks.4.processor.proj_lora2.down.weight": torch.randn(2, 3072, generator=g),
        "double_blocks.4.processor.proj_lora2.up.weight": torch.randn(3072, 2, generator=g),
        "single_blocks.1.processor.qkv_lora.down.weight": torch.randn(2, 3072, generator=g),
        "single_blocks.1.processor.qkv_lora.up.weight": torch.randn(9216, 2, generator=g),
    }
    back = read_flux_lora(sd)
    assert back.layout == "xlabs" and back.unknown == {}
    targets = {path for _, path in back.by_target()}
    assert targets == {"transformer_blocks.4.attn.to_q", "transformer_blocks.4.attn.to_k",
                       "transformer_blocks.4.attn.to_v", "transformer_blocks.4.attn.to_add_out",
                       "single_transformer_blocks.1.attn.to_q", "single_transformer_blocks.1.attn.to_k",
                       "single_transformer_blocks.1.attn.to_v"}
    v = back.by_target()[("unet", "transformer_blocks.4.attn.to_v")]
    full = sd["double_blocks.4.processor.qkv_lora1.up.weight"] @ sd["double_blocks.4.processor.qkv_lora1.down.weight"]
    assert torch.allclose(delta(v), full[6144:], atol=1e-5)  # no alpha: scale 1


def test_unknown_names_are_reported_and_flux_detected():
    sd = {"lora_unet_double_blocks_99_img_attn_qkv.lora_down.weight": torch.zeros(1, 4),
          "lora_unet_double_blocks_99_img_attn_qkv.lora_up.weight": torch.zeros(4, 1)}
    back = read_flux_lora(sd)
    assert back.modules == {} and len(back.unknown) == 2
    assert flux_lora_evidence(sd)
    assert flux_lora_evidence({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": 0}) is None


def test_metadata_is_sd_scripts_flux():
    meta = flux_metadata(dev=False, training={"ss_guidance_scale": 1.0})
    assert meta["ss_base_model_version"] == "flux1"
    assert meta["ss_network_module"] == "networks.lora_flux"
    assert meta["modelspec.architecture"] == "flux-1-schnell/lora"
    assert meta["ss_guidance_scale"] == "1.0"
