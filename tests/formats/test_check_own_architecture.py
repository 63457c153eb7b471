"""`check_state_dict` against an actual model's architecture (its diffusers UNet config and text-encoder configs):
ComfyUI's unet_config is derived from the diffusers config as ComfyUI derives it from a checkpoint, a file trained
on the tiny models maps 100 % there (and is a shape mismatch against the full-size default), and the exported files
of our own networks, broken the ways formats.md warns about, are reported broken."""

from __future__ import annotations

import pytest
import torch

from loraforge.formats.check import check_state_dict
from loraforge.formats.consumers.tables import UNET_CONFIGS, comfy_unet_config, family_tables, model_tables_key
from loraforge.formats.kohya import kohya_state_dict
from loraforge.families.ldm import unet_key_map
from loraforge.families import full_size_config

from ..networks.helpers import build, one_thread, randomize


@pytest.fixture(scope="module")
def models(tiny_models):
    with one_thread():
        yield {"sd15": tiny_models("sd15"), "sdxl": tiny_models("sdxl")}


def _configs(model):
    return dict(model.unet.config), [te.config.to_dict() for te in model.text_encoders]


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_comfy_unet_config_of_the_full_size_models(family):
    assert comfy_unet_config(full_size_config(family, "unet")) == UNET_CONFIGS[family]


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_tiny_tables_agree_with_the_ldm_names(models, family):
    unet_cfg, te_cfgs = _configs(models[family])
    key = model_tables_key(family, unet_cfg, te_cfgs)
    assert key.family == family and key == model_tables_key(family, unet_cfg, te_cfgs)
    tables = family_tables(key)  # asserts the derivation covers every weight of the tiny UNet
    ldm = unet_key_map(unet_cfg)
    assert {k: v for k, v in tables.diffusers_to_ldm.items() if k in tables.unet_diffusers} == \
        {k: v for k, v in ldm.items() if k in tables.unet_diffusers}
    assert len(tables.text_encoders["te1" if family == "sdxl" else "te"]) > 0


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("algo", ["lora", "locon", "loha", "lokr", "dora"])
def test_tiny_export_maps_completely_on_its_own_architecture(models, family, algo):
    model, net = build(models[family], family, **{"network.algo": algo, "network.preset": "full",
                                                  "network.train_text_encoder": True})
    randomize(net)
    sd = kohya_state_dict(net.module_tensors().values(), family, dict(model.unet.config))
    unet_cfg, te_cfgs = _configs(model)
    report = check_state_dict(sd, family, unet_config=unet_cfg, text_encoder_configs=te_cfgs)
    n = len(net.targets)
    assert report.errors == [], [str(i) for i in report.errors]
    for name in ("comfyui", "a1111"):
        rep = report.consumers[name]
        assert rep.applied == rep.total == n and not rep.unmatched and not rep.skipped, rep.lines()
    assert "own architecture" in report.family_evidence
    full = check_state_dict(sd, family)  # the default: the full-size family
    assert full.issue("shape-mismatch") is not None


def test_our_files_broken_the_known_ways_are_reported(models):
    model, net = build(models["sd15"], "sd15", **{"network.algo": "dora", "network.train_text_encoder": True})
    randomize(net)
    good = kohya_state_dict(net.module_tensors().values(), "sd15", None)
    cfgs = _configs(model)

    def check(sd):
        return check_state_dict(sd, "sd15", unet_config=cfgs[0], text_encoder_configs=cfgs[1])

    assert not check(good).broken
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    cases = {
        "dotted-module-name": lambda sd: {k.replace("attn1_to_q.", "attn1.to_q."): v for k, v in sd.items()},
        "peft-style-keys": lambda sd: {**{k: v for k, v in sd.items() if not k.startswith(name)},
                                       "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight":
                                           sd[f"{name}.lora_down.weight"],
                                       "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight":
                                           sd[f"{name}.lora_up.weight"]},
        "dora-scale-1d": lambda sd: {**sd, f"{name}.dora_scale": sd[f"{name}.dora_scale"].flatten()},
        "alpha-missing": lambda sd: {k: v for k, v in sd.items() if k != f"{name}.alpha"},
    }  # fmt: skip
    for code, mutate in cases.items():
        report = check(mutate(dict(good)))
        assert report.broken and report.issue(code) is not None, (code, str(report))


def test_unet_only_configs_use_the_full_size_text_encoders(models):
    unet_cfg, _ = _configs(models["sd15"])
    tables = family_tables(model_tables_key("sd15", unet_cfg))
    assert tables.text_encoders["te"]["text_model.encoder.layers.11.mlp.fc2.weight"] == (768, 3072)
    assert torch.Size(tables.unet_diffusers["conv_in.weight"])[0] == 32  # the tiny UNet
