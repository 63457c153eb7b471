"""Block-wise ranks, alphas and learning rates (sd-scripts' numbering: SD 1.x 25 values IN0-11, MID, OUT0-11; SDXL 23
values emb, IN0-8, MID0-2, OUT0-8, out): every module of a block gets the block's rank and alpha, a 0 removes the
block's modules, learning-rate weights become optimizer groups, LoRA+ puts the up matrices at lr × ratio."""

from __future__ import annotations

import pytest
import torch

from loraforge.config.optimizer import OptimizerConfig
from loraforge.errors import NetworkError
from loraforge.families import full_size_config
from loraforge.networks.blocks import block_index, block_label, unet_block_indices
from loraforge.training.optim import param_groups

from .helpers import build, one_thread


@pytest.fixture(scope="module")
def models(tiny_models):
    with one_thread():
        yield {"sd15": tiny_models("sd15"), "sdxl": tiny_models("sdxl")}


def test_block_numbers_on_the_full_size_unets():
    paths = {
        "sd15": {
            "conv_in": 0, "down_blocks.0.resnets.0.conv1": 1, "down_blocks.0.attentions.1.proj_in": 2,
            "down_blocks.0.downsamplers.0.conv": 3, "down_blocks.3.resnets.1.conv2": 11,
            "mid_block.resnets.0.conv1": 12, "mid_block.attentions.0.transformer_blocks.0.attn1.to_q": 12,
            "up_blocks.0.resnets.0.conv1": 13, "up_blocks.0.upsamplers.0.conv": 15,
            "up_blocks.3.attentions.2.proj_out": 24, "conv_out": None, "time_embedding.linear_1": None,
        },
        "sdxl": {
            "time_embedding.linear_1": 0, "add_embedding.linear_2": 0, "conv_in": 1,
            "down_blocks.0.downsamplers.0.conv": 4, "down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2": 9,
            "mid_block.resnets.0.conv1": 10, "mid_block.attentions.0.proj_in": 11, "mid_block.resnets.1.conv2": 12,
            "up_blocks.0.resnets.0.conv1": 13, "up_blocks.0.upsamplers.0.conv": 15,
            "up_blocks.2.resnets.2.conv_shortcut": 21, "conv_out": 22,
        },
    }  # fmt: skip
    for family, expected in paths.items():
        got = unet_block_indices(full_size_config(family, "unet"), family, expected)
        assert got == expected, family
    assert [block_label("sd15", i) for i in (0, 11, 12, 13, 24)] == ["IN00", "IN11", "MID", "OUT00", "OUT11"]
    assert [block_label("sdxl", i) for i in (0, 1, 9, 10, 12, 13, 21, 22)] == \
        ["EMB", "IN00", "IN08", "MID0", "MID2", "OUT00", "OUT08", "OUT"]
    assert block_index("sd15", "out.2") is None and block_index("sdxl", "out.2") == 22


def _ranks(net):
    return {key: (net.target_params(key).get("lora_down.weight") if key in net.targets else None)
            for key in net.targets}


@pytest.mark.parametrize("algo", ["lora", "locon"])
def test_block_dims_and_alphas_sd15(models, algo):
    # tiny SD 1.5: IN0-5, MID, OUT0-5 exist; attention in IN1, IN2, MID, OUT3-5
    dims = [0, 2, 0, 0, 5, 6, 0, 0, 0, 0, 0, 0, 7, 2, 3, 4, 5, 0, 7, 1, 0, 0, 0, 0, 0]
    alphas = [float(i + 1) for i in range(25)]
    conv = {"network.conv_block_dims": [3] * 13 + [0] * 12, "network.conv_dim": 5} if algo == "locon" else {}
    model, net = build(models["sd15"], "sd15", **{"network.algo": algo, "network.preset": "full",
                                                  "network.block_dims": dims, "network.block_alphas": alphas,
                                                  "network.rank": 8, "network.alpha": 4.0}, **conv)
    tensors = net.module_tensors()
    seen = set()
    for key, target in net.targets.items():
        rank = tensors[key].tensors["lora_down.weight"].shape[0]
        block = target.block
        if target.kind == "conv":
            assert rank == (3 if block < 13 else 0) if block is not None else rank == 5, key
            continue
        if block is None:  # time embedding, conv_out's neighbours outside the blocks: the base rank/alpha
            assert (rank, tensors[key].alpha) == (8, 4.0), key
            continue
        assert rank == dims[block] and tensors[key].alpha == alphas[block], key
        seen.add(block)
    assert seen == {1, 4, 5, 12, 13, 14, 15, 16, 18}
    present = unet_block_indices(dict(model.unet.config), "sd15",
                                 [n for n, _ in model.unet.named_modules() if n.endswith(("to_q", "conv1"))])
    removed = {p for p, b in present.items() if b is not None and dims[b] == 0 and p.endswith("to_q")}
    assert removed and not removed & {k[1] for k in net.targets}  # a 0 removes the block's modules
    if algo == "locon":
        assert not any(t.kind == "conv" and t.block is not None and t.block >= 13 for t in net.targets.values())


def test_block_dims_sdxl_23_values(models):
    dims = [1] + [2] * 9 + [3, 4, 5] + [6] * 9 + [7]
    model, net = build(models["sdxl"], "sdxl", **{"network.algo": "loha", "network.preset": "full",
                                                  "network.block_dims": dims, "network.conv_block_dims": dims})
    tensors = net.module_tensors()
    by_block = {}
    for key, target in net.targets.items():
        if target.part == "unet":
            by_block.setdefault(target.block, set()).add(tensors[key].tensors["hada_w1_b"].shape[0])
    assert by_block == {i: {d} for i, d in enumerate(dims)}  # every slot exists in the tiny SDXL, emb and out too


def test_block_count_must_fit_the_family(models):
    with pytest.raises(NetworkError, match="has 25 values but the model is sdxl: SDXL .* takes 23"):
        build(models["sdxl"], "sdxl", **{"model.family": "sd15", "network.block_dims": [4] * 25})


def test_block_lr_weights_and_loraplus_groups(models):
    weights = [1.0] * 13 + [0.5] * 12
    weights[3] = 0.0
    model, net = build(models["sd15"], "sd15", **{"network.algo": "locon", "network.preset": "full",
                                                  "network.block_lr_weights": weights, "network.loraplus_lr_ratio": 16.0,
                                                  "network.train_text_encoder": True})
    assert not any(t.block == 3 for t in net.targets.values())  # weight 0: removed
    groups = param_groups(net, OptimizerConfig(learning_rate=1e-3, unet_lr=2e-3, text_encoder_lr=1e-4))
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == pytest.approx({"unet_lr0.5": 1e-3, "unet_lr0.5_plus": 16e-3, "unet_lr1": 2e-3,
                                 "unet_lr1_plus": 32e-3, "text_encoder": 1e-4, "text_encoder_plus": 16e-4})
    ups = {id(p) for key in net.targets for n, p in net.target_params(key).items() if n.startswith("lora_up")}
    for g in groups:
        assert all((id(p) in ups) == g["name"].endswith("plus") for p in g["params"]), g["name"]
    n = sum(p.numel() for g in groups for p in g["params"])
    assert n == sum(p.numel() for part in net.parts for p in net.parameters(part))
    half = {id(p) for key, t in net.targets.items() if t.part == "unet" and t.block is not None and t.block >= 13
            for p in net.target_params(key).values()}  # fmt: skip
    assert half == {id(p) for g in groups if g["name"].startswith("unet_lr0.5") for p in g["params"]}


@pytest.mark.parametrize("algo,up", [("lora", "lora_up.weight"), ("loha", "hada_w1_a"), ("dora", "lora_up.weight")])
def test_loraplus_speeds_up_the_up_matrices(models, algo, up):
    model, net = build(models["sd15"], "sd15", **{"network.algo": algo, "network.loraplus_lr_ratio": 4.0})
    groups = {g["name"]: g for g in param_groups(net, OptimizerConfig(learning_rate=1e-4))}
    assert set(groups) == {"unet", "unet_plus"} and groups["unet_plus"]["lr"] == pytest.approx(4e-4)
    names = {id(p): n for key in net.targets for n, p in net.target_params(key).items()}
    assert {names[id(p)] for p in groups["unet_plus"]["params"]} == ({up, "hada_w2_a"} if algo == "loha" else {up})
    assert torch.is_tensor(groups["unet"]["params"][0])


def test_flux_blocks_are_the_double_then_the_single_blocks():
    from loraforge.families import family

    paths = ["transformer_blocks.0.attn.to_q", "transformer_blocks.18.ff.net.2", "single_transformer_blocks.0.proj_mlp",
             "single_transformer_blocks.37.norm.linear", "proj_out", "time_text_embed.timestep_embedder.linear_1"]
    got = unet_block_indices({}, "flux", paths)
    assert list(got.values()) == [0, 18, 19, 56, None, None]
    assert family("flux").block_count == 57
    assert [block_label("flux", i) for i in (0, 18, 19, 56)] == ["D00", "D18", "S00", "S37"]
