"""Presets select the documented module sets, counted on the full-size models (meta device): `attn-mlp` is kohya's
LoRA (SD 1.5: 192 UNet + 72 text-encoder modules), `full` with a LyCORIS algo is LoCon's 282 UNet modules, `lora`
leaves k×k convolutions out; SDXL's `text_projection` is never selected; `train_norm` adds only UNet norms."""

from __future__ import annotations

import logging

import pytest

from loraforge.errors import NetworkError
from loraforge.networks.presets import layer_kind
from loraforge.networks.targets import plan_targets

from .helpers import MetaModel, network_config

# (family, preset) -> (UNet with lora, UNet with a LyCORIS algo, text-encoder modules)
COUNTS = {
    ("sd15", "full"): (230, 282, 72),
    ("sd15", "full-lin"): (230, 230, 72),
    ("sd15", "attn-mlp"): (192, 192, 72),
    ("sd15", "attn-only"): (128, 128, 48),
    ("sd15", "unet-transformer-only"): (192, 192, 0),
    ("sd15", "unet-convblock-only"): (36, 88, 0),
    ("sdxl", "full"): (754, 794, 264),
    ("sdxl", "full-lin"): (754, 754, 264),
    ("sdxl", "attn-mlp"): (722, 722, 264),
    ("sdxl", "attn-only"): (560, 560, 176),
    ("sdxl", "unet-transformer-only"): (722, 722, 0),
    ("sdxl", "unet-convblock-only"): (28, 68, 0),
}


@pytest.fixture(scope="module")
def meta():
    return {f: MetaModel(f) for f in ("sd15", "sdxl")}


def _plan(model, family, **overrides):
    return plan_targets(model, network_config(family, **overrides))


@pytest.mark.parametrize("family,preset", list(COUNTS))
def test_preset_module_counts(meta, family, preset):
    lora_unet, lycoris_unet, te = COUNTS[(family, preset)]
    with_te = not preset.startswith("unet-")
    for algo, unet in (("lora", lora_unet), ("locon", lycoris_unet)):
        plan = _plan(meta[family], family, **{"network.algo": algo, "network.preset": preset,
                                              "network.train_text_encoder": with_te})
        assert sum(t.part == "unet" for t in plan) == unet, (algo, preset)
        assert sum(t.part != "unet" for t in plan) == te, (algo, preset)
        assert all(t.kind != "norm" for t in plan)
        if algo == "lora":
            assert all(t.kind in ("linear", "conv1x1") for t in plan)


def test_preset_contents(meta):
    plan = _plan(meta["sd15"], "sd15", **{"network.preset": "attn-only", "network.train_text_encoder": True})
    import re

    unet = [t.path for t in plan if t.part == "unet"]
    assert all(re.search(r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$", p) for p in unet)
    assert {t.path.rsplit(".", 1)[-1] for t in plan if t.part == "te1"} == {"q_proj", "k_proj", "v_proj", "out_proj"}

    full = {t.path for t in _plan(meta["sdxl"], "sdxl", **{"network.algo": "loha", "network.preset": "full",
                                                           "network.train_text_encoder": True})}
    for path in ("conv_in", "conv_out", "time_embedding.linear_1", "add_embedding.linear_2",
                 "down_blocks.0.downsamplers.0.conv", "up_blocks.0.upsamplers.0.conv", "mid_block.resnets.1.conv2"):
        assert path in full, path
    assert not any("text_projection" in p or "norm" in p.rsplit(".", 1)[-1] for p in full)

    attn_mlp = {t.path.rsplit(".", 1)[-1] for t in _plan(meta["sd15"], "sd15", **{"network.preset": "attn-mlp"})}
    assert attn_mlp == {"proj_in", "proj_out", "to_q", "to_k", "to_v", "0", "proj", "2"}


def test_train_norm_adds_unet_norms_only(meta):
    plan = _plan(meta["sd15"], "sd15", **{"network.algo": "locon", "network.preset": "full", "network.train_norm": True,
                                          "network.train_text_encoder": True})
    norms = [t for t in plan if t.kind == "norm"]
    assert norms and all(t.part == "unet" for t in norms)
    # resnets: norm1, norm2 (22 × 2); transformers: norm + 3 LayerNorms per block (16 × 4)
    assert len(norms) == 22 * 2 + 16 * 4


def test_custom_targets_and_kxk_convs(meta):
    plan = _plan(meta["sd15"], "sd15", **{"network.algo": "locon", "network.target_modules": ["conv1", "to_k"]})
    assert {layer_kind(t.module) for t in plan} == {"conv", "linear"}
    with pytest.raises(NetworkError, match=r"k×k convolutions .*use network.algo = 'locon'"):
        _plan(meta["sd15"], "sd15", **{"network.target_modules": ["conv1", "to_k"]})
    with pytest.raises(NetworkError, match=r"network.target_modules = \['nothing'\] matched no unet module"):
        _plan(meta["sd15"], "sd15", **{"network.target_modules": ["nothing"]})


def test_lora_with_a_conv_preset_says_what_it_leaves_out(meta, caplog):
    with caplog.at_level(logging.INFO, logger="loraforge"):
        _plan(meta["sd15"], "sd15", **{"network.preset": "full"})
    assert "52 k×k convolutions" in caplog.text and "use 'locon'" in caplog.text


def test_conv_dim_zero_leaves_convs_out(meta):
    plan = _plan(meta["sd15"], "sd15", **{"network.algo": "locon", "network.preset": "full", "network.conv_dim": 0})
    assert len(plan) == 230 and all(t.kind != "conv" for t in plan)


def test_locon_without_conv_targets_warns_that_it_trains_what_lora_would(meta, caplog):
    """LoCon adds k×k convolutions only where the targets name them: the default attention targets get a warning
    with the two ways to name them; naming conv1 / conv2 (or a preset with convs) adapts them, without the warning."""
    with caplog.at_level("WARNING", logger="loraforge.networks.targets"):
        plain = _plan(meta["sd15"], "sd15", **{"network.algo": "locon"})
    assert not any(t.kind == "conv" for t in plain)
    assert "trains what 'lora' would" in caplog.text and "network.preset = 'full'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="loraforge.networks.targets"):
        convs = _plan(meta["sd15"], "sd15", **{"network.algo": "locon",
                                                  "network.target_modules": ["to_q", "to_k", "to_v", "conv1", "conv2"]})
        full = _plan(meta["sd15"], "sd15", **{"network.algo": "locon", "network.preset": "full"})
    assert any(t.kind == "conv" for t in convs) and any(t.kind == "conv" for t in full)
    assert "trains what 'lora' would" not in caplog.text
