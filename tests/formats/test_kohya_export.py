"""The trainer's own kohya export, on the full-size SD 1.5 / SD 2.1 / SDXL architectures (built on the meta device,
only the adapter tensors materialised): for every algo, UNet and text encoders, every module resolves to an existing
weight in ComfyUI's and A1111's key maps (100 %), the layout follows formats.md (0-dim alpha, keep-dim dora_scale,
the LyCORIS suffixes, no dotted module names, SGM names for the SDXL UNet), and diffusers accepts what it can load."""

import pytest
import torch

from loraforge.config import load_config
from loraforge.formats.check import check_state_dict
from loraforge.formats.kohya import kohya_module_name, kohya_state_dict
from loraforge.families import full_size_config
from loraforge.networks import create_network

from ..networks.helpers import MetaModel, materialise, network_config, one_thread

SUFFIXES = {  # the tensor suffixes each algo may write (besides alpha)
    "lora": {"lora_down.weight", "lora_up.weight"},
    "locon": {"lora_down.weight", "lora_up.weight"},
    "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"},
    "lokr": {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"},
    "dora": {"lora_down.weight", "lora_up.weight", "dora_scale"},
}
# UNet + text-encoder modules of the `full` preset (tests/networks/test_presets.py has the per-preset table)
FULL_COUNTS = {("sd15", "lora"): 230 + 72, ("sd15", "lycoris"): 282 + 72,
               ("sdxl", "lora"): 754 + 264, ("sdxl", "lycoris"): 794 + 264}  # fmt: skip


def _export(family: str, **overrides):
    cfg = network_config(family, **overrides)
    model = MetaModel(family)
    net = create_network(cfg)
    net.apply(model)
    materialise(net)
    return model, net, kohya_state_dict(net.module_tensors().values(), family, dict(model.unet.config))


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_default_lora_resolves_in_every_consumer(family):
    cfg = load_config(None, ["network.rank=4", "network.alpha=2", "network.train_text_encoder=true"]).network
    model = MetaModel(family)
    net = create_network(cfg)
    net.apply(model)
    materialise(net)
    sd = kohya_state_dict(net.module_tensors().values(), family, dict(model.unet.config))
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


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("algo", ["lora", "locon", "loha", "lokr", "dora"])
def test_every_algo_full_preset_maps_completely(family, algo):
    with one_thread():
        model, net, sd = _export(family, **{"network.algo": algo, "network.preset": "full",
                                            "network.train_text_encoder": True, "network.alpha": 2.0})
        report = check_state_dict(sd, family)
    modules = {k.partition(".")[0] for k in sd}
    assert len(modules) == FULL_COUNTS[(family, "lora" if algo == "lora" else "lycoris")]
    assert report.errors == [] and report.warnings == [], [str(i) for i in report.issues]
    for name in ("comfyui", "a1111"):
        rep = report.consumers[name]
        assert rep.loads and rep.applied == rep.total == len(modules), (name, rep.lines())
        assert not rep.unmatched and not rep.skipped and not rep.wrong, (name, rep.lines())
    diffusers = report.consumers["diffusers"]
    if algo in ("lora", "locon"):
        assert diffusers.loads and diffusers.applied == len(modules), diffusers.lines()
    elif algo == "dora":  # loads, but as a plain LoRA: the trainer writes no diffusers file for DoRA
        assert diffusers.loads and len(diffusers.wrong) == len(modules)
    else:
        assert not diffusers.loads and "cannot load" in diffusers.reason

    # layout: no dot in module names, prefixes per part, 0-dim alpha everywhere, only the algo's suffixes
    assert all("." not in m for m in modules)
    prefixes = ("lora_unet_", "lora_te1_", "lora_te2_") if family == "sdxl" else ("lora_unet_", "lora_te_")
    assert all(m.startswith(prefixes) for m in modules)
    assert all(sd[f"{m}.alpha"].dim() == 0 for m in modules)
    suffixes = {k.partition(".")[2] for k in sd} - {"alpha"}
    assert suffixes <= SUFFIXES[algo], suffixes
    if family == "sdxl":
        assert not any(m.startswith(("lora_unet_down_blocks", "lora_unet_up_blocks", "lora_unet_mid_block"))
                       for m in modules)  # SGM names, what sd-scripts writes for SDXL
        assert "lora_unet_label_emb_0_0" in modules and "lora_unet_output_blocks_2_2_conv" in modules \
            or algo == "lora"
    if algo == "dora":
        tensors = net.module_tensors()
        for key, target in net.targets.items():
            W = target.module.weight
            dora = tensors[key].tensors["dora_scale"]
            assert tuple(dora.shape) == (1, W.shape[1], *([1] * (W.dim() - 2))), key


def test_sdxl_diffusers_names_would_lose_three_modules_in_a1111():
    """Why the SDXL UNet is written with SGM names: with diffusers names, A1111 1.10.1 cannot place the upsampler of
    up_blocks.0 and the add embedding (formats.md §2.3); SGM names have no gap. (`text_projection`, A1111's third
    SDXL gap, is never adapted by any preset.)"""
    with one_thread():
        model, net, sd = _export("sdxl", **{"network.algo": "locon", "network.preset": "full"})
        renamed = {}
        for (part, path), mt in net.module_tensors().items():
            name = "lora_unet_" + path.replace(".", "_")
            for suffix, tensor in mt.tensors.items():
                renamed[f"{name}.{suffix}"] = tensor
            renamed[f"{name}.alpha"] = torch.tensor(mt.alpha)
        report = check_state_dict(renamed, "sdxl")
    a1111 = report.consumers["a1111"]
    missed = {k.partition(".")[0] for k in a1111.unmatched}
    assert missed == {"lora_unet_up_blocks_0_upsamplers_0_conv", "lora_unet_add_embedding_linear_1",
                      "lora_unet_add_embedding_linear_2"}
    assert a1111.applied == a1111.total - 3 and report.consumers["comfyui"].applied == a1111.total
    assert not any(m.startswith("text_projection") for _, m in net.targets)


def test_rslora_stores_alpha_times_sqrt_rank():
    with one_thread():
        for algo in ("lora", "locon"):
            _, net, sd = _export("sd15", **{"network.algo": algo, "network.rank": 16, "network.alpha": 4.0,
                                            "network.rs_lora": True})
            alphas = {float(v) for k, v in sd.items() if k.endswith(".alpha")}
            assert len(alphas) == 1 and alphas.pop() == pytest.approx(4.0 * 4), algo  # alpha·√16 = 16


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


def test_text_projection_has_no_text_model_level():
    # consumers map `lora_te2_text_projection` (formats.md §2.1); CLIP keeps text_projection outside text_model
    assert kohya_module_name("te2", "text_projection", "sdxl") == "lora_te2_text_projection"
    unet = full_size_config("sd15", "unet")
    assert kohya_module_name("unet", "down_blocks.1.attentions.0.proj_in", "sd15", unet, naming="ldm") == \
        "lora_unet_input_blocks_4_1_proj_in"
