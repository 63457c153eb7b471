"""The trainer's own ΔW (`network.delta_weight`) is what training computes and what every consumer reproduces.

On the tiny models (real SD layer types, small real shapes), with random adapter weights, for every algo and option
(Tucker, scalar, rsLoRA, LoKr layouts, input-axis DoRA, norm layers):
* the patched layer's eval forward equals the base layer run with W + ΔW (so ΔW is what training meant);
* the ΔW ComfyUI and A1111 compute from the exported kohya tensors (the clean-room consumer models) equals ΔW within
  1e-5 relative, and so does diffusers' for the algos it loads;
* LoHa, LoKr, LoCon and DoRA ΔW agree with `lycoris.functional` on the exported tensors.
Output-axis DoRA trains and exports consistently but both consumers mis-merge it (the documented caveat).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from loraforge.formats.check import consumer_merged_delta
from loraforge.formats.consumers import ConsumerMergeError

from .helpers import build, file_tensors, one_thread, randomize, rel_err

FULL = {"network.preset": "full", "network.train_text_encoder": True}
VARIANTS = {  # id -> network overrides (every variant adapts the UNet's full preset and the text encoders)
    "lora": {"network.algo": "lora"},
    "lora-rslora-blocks": {"network.algo": "lora", "network.rs_lora": True, "network.alpha": 2.0},
    "locon": {"network.algo": "locon", "network.conv_dim": 3, "network.conv_alpha": 1.5},
    "locon-tucker": {"network.algo": "locon", "network.use_tucker": True},
    "locon-scalar-rslora": {"network.algo": "locon", "network.use_scalar": True, "network.rs_lora": True,
                            "network.alpha": 3.0},
    "loha": {"network.algo": "loha", "network.alpha": 2.0},
    "loha-tucker-scalar": {"network.algo": "loha", "network.use_tucker": True, "network.use_scalar": True},
    "lokr": {"network.algo": "lokr", "network.alpha": 2.0},
    "lokr-decompose-both-rslora": {"network.algo": "lokr", "network.decompose_both": True, "network.rank": 2,
                                   "network.rs_lora": True},
    "lokr-full-matrix": {"network.algo": "lokr", "network.full_matrix": True, "network.use_scalar": True},
    "lokr-factor-4": {"network.algo": "lokr", "network.factor": 4, "network.rank": 2},
    "dora": {"network.algo": "dora", "network.alpha": 2.0},
    "dora-tucker-scalar": {"network.algo": "dora", "network.use_tucker": True, "network.use_scalar": True},
    "locon-train-norm": {"network.algo": "locon", "network.train_norm": True},
}
SDXL_VARIANTS = ("lora", "locon-tucker", "loha", "lokr", "dora")


@pytest.fixture(scope="module")
def models(tiny_models):
    with one_thread():
        yield {"sd15": tiny_models("sd15"), "sdxl": tiny_models("sdxl")}
    _CACHE.clear()


_CACHE: dict = {}


def _net(models, family, variant):
    """(model, network) with random weights, built once per module run (the tests only read them)."""
    if (family, variant) in _CACHE:
        return _CACHE[(family, variant)]
    model, net = build(models[family], family, **FULL, **VARIANTS[variant])
    randomize(net, seed=1)
    model.unet.eval()
    for te in model.text_encoders:
        te.eval()
    _CACHE[(family, variant)] = model, net
    return model, net


def _forward_check(net, target, delta) -> float:
    """rel. error between the patched layer's output (peft's wrapper or the LyCORIS-patched layer) and the base op
    with W + ΔW."""
    m = target.module
    layer = net.roots[target.part].get_submodule(target.path)
    W = m.weight.detach().float()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if target.kind == "linear":
            x = torch.randn(3, W.shape[1], generator=g)
            want = F.linear(x, W + delta, m.bias)
        elif target.kind in ("conv", "conv1x1"):
            x = torch.randn(1, W.shape[1], 8, 8, generator=g)
            want = F.conv2d(x, W + delta, m.bias, m.stride, m.padding, m.dilation, m.groups)
        else:  # norm: the offsets of weight and bias
            adapter = target.adapter
            b = m.bias + adapter.b_norm
            if isinstance(m, torch.nn.GroupNorm):
                x = torch.randn(2, W.shape[0], 4, 4, generator=g)
                want = F.group_norm(x, m.num_groups, W + delta, b, m.eps)
            else:
                x = torch.randn(3, W.shape[0], generator=g)
                want = F.layer_norm(x, m.normalized_shape, W + delta, b, m.eps)
        got = layer(x)
    return rel_err(got, want)


def _check_variant(models, family, variant, consumers=("comfyui", "a1111")):
    model, net = _net(models, family, variant)
    tensors = net.module_tensors()
    assert tensors, variant
    n_checked = 0
    for key, target in net.targets.items():
        delta = net.delta_weight(*key)
        W = target.module.weight.detach().float()
        assert delta.shape == W.shape, (key, delta.shape, W.shape)
        assert delta.norm() > 1e-4 * W.norm(), (key, "ΔW is ~0: randomize did not reach it")
        if hasattr(net, "adapters"):
            target.adapter = net.adapters[key]
        assert _forward_check(net, target, delta) < 1e-5, (variant, key)
        ft = file_tensors(tensors[key])
        for consumer in consumers:
            got = consumer_merged_delta(consumer, W, ft)
            assert rel_err(got, delta) < 1e-5, (variant, consumer, key, rel_err(got, delta))
        n_checked += 1
    return net, tensors, n_checked


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_sd15_delta_is_the_forward_and_every_consumer_reproduces_it(models, variant):
    _, _, n = _check_variant(models, "sd15", variant)
    assert n > 50


@pytest.mark.parametrize("variant", SDXL_VARIANTS)
def test_sdxl_delta_is_the_forward_and_every_consumer_reproduces_it(models, variant):
    _, _, n = _check_variant(models, "sdxl", variant)
    assert n > 100


@pytest.mark.parametrize("variant", ["lora", "locon"])
def test_diffusers_reproduces_lora_and_locon(models, variant):
    net, tensors, _ = _check_variant(models, "sd15", variant, consumers=("diffusers",))
    assert net.diffusers_support() is None


def test_diffusers_refuses_the_other_algos(models):
    model, net = _net(models, "sd15", "loha")
    key = next(iter(net.targets))
    W = net.targets[key].module.weight
    with pytest.raises(ConsumerMergeError, match="LoHa"):
        consumer_merged_delta("diffusers", W, file_tensors(net.module_tensors()[key]))
    for variant in ("loha", "lokr", "dora", "locon-tucker", "locon-train-norm"):
        _, net = _net(models, "sd15", variant)
        assert net.diffusers_support(), variant


def test_output_axis_dora_trains_consistently_but_consumers_mis_merge_it(models):
    model, net = build(models["sd15"], "sd15", **{"network.algo": "dora", "network.dora_axis": "output",
                                                  "network.preset": "attn-mlp"})
    randomize(net, seed=2, std=0.3)
    model.unet.eval()
    tensors = net.module_tensors()
    wrong = 0
    for key, target in net.targets.items():
        delta = net.delta_weight(*key)
        target.adapter = net.adapters[key]
        assert _forward_check(net, target, delta) < 1e-5
        t = file_tensors(tensors[key])
        W = target.module.weight.detach().float()
        assert t["dora_scale"].shape == (W.shape[0],) + (1,) * (W.dim() - 1)  # keep-dim, output axis
        errors = [rel_err(consumer_merged_delta(c, W, t), delta) for c in ("comfyui", "a1111")]
        wrong += all(e > 1e-3 for e in errors)
    assert wrong == len(net.targets)


def test_dora_scale_is_keep_dim_on_the_input_axis(models):
    _, net = _net(models, "sd15", "dora")
    for key, mt in net.module_tensors().items():
        W = net.targets[key].module.weight
        assert mt.tensors["dora_scale"].shape == (1, W.shape[1]) + (1,) * (W.dim() - 2), key


def test_agrees_with_lycoris_functional(models):
    from lycoris.functional import locon, loha, lokr
    from lycoris.functional.general import weight_decompose

    for variant in ("locon-tucker", "loha-tucker-scalar", "loha", "lokr", "lokr-decompose-both-rslora",
                    "lokr-full-matrix", "dora", "dora-tucker-scalar"):
        _, net = _net(models, "sd15", variant)
        tensors = net.module_tensors()
        for key, target in list(net.targets.items())[::7]:
            t = file_tensors(tensors[key])
            W = target.module.weight.detach().float()
            alpha = float(t["alpha"])
            if "lora_up.weight" in t:
                rank = t["lora_down.weight"].shape[0]
                ref = locon.diff_weight(t["lora_down.weight"], t["lora_up.weight"], t.get("lora_mid.weight"),
                                        gamma=alpha / rank).reshape(W.shape)
                if "dora_scale" in t:
                    ref = weight_decompose(W + ref, t["dora_scale"], 1.0, False) - W
            elif "hada_w1_a" in t:
                rank = t["hada_w1_b"].shape[0]
                ref = loha.diff_weight(t["hada_w1_b"], t["hada_w1_a"], t["hada_w2_b"], t["hada_w2_a"],
                                       t.get("hada_t1"), t.get("hada_t2"), gamma=alpha / rank).reshape(W.shape)
            else:
                args = [t.get(k) for k in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b",
                                           "lokr_t2")]
                factored = t.get("lokr_w1_a") is not None or t.get("lokr_w2_a") is not None
                ref = lokr.diff_weight(*args, gamma=alpha if factored else 1.0).reshape(W.shape)
            assert rel_err(ref, net.delta_weight(*key)) < 1e-5, (variant, key)
