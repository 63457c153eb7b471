"""Max-norm regularisation (`optimizer.scale_weight_norms`) for every algo: each module whose update ‖ΔW‖ exceeds
the cap is scaled back to it, the others are untouched, and the update keeps its direction."""

from __future__ import annotations

import pytest
import torch

from loraforge.adapters import raw_delta

from .helpers import build, one_thread, randomize, rel_err

VARIANTS = {
    "lora": {"network.algo": "lora"},
    "locon-conv": {"network.algo": "locon", "network.preset": "full", "network.conv_dim": 3},
    "locon-tucker-scalar": {"network.algo": "locon", "network.preset": "full", "network.use_tucker": True,
                            "network.use_scalar": True},
    "loha": {"network.algo": "loha", "network.alpha": 2.0},
    "loha-tucker": {"network.algo": "loha", "network.preset": "full", "network.use_tucker": True},
    "lokr": {"network.algo": "lokr", "network.alpha": 2.0},
    "lokr-decompose-both": {"network.algo": "lokr", "network.decompose_both": True, "network.rank": 2},
    "dora": {"network.algo": "dora"},
    "locon-train-norm": {"network.algo": "locon", "network.preset": "full", "network.train_norm": True},
}
FIXED = ("scalar", "dora_scale")  # not factors of ΔW's product: max-norm leaves them alone


@pytest.fixture(scope="module")
def sd15(tiny_models):
    with one_thread():
        yield tiny_models("sd15")


def _norms(net) -> dict:
    """‖ΔW‖ of each module as its file holds it (DoRA: the update before the decomposition); no norm layers."""
    return {k: (raw_delta(m) * m.scale).norm().item() for k, m in net.module_tensors().items()
            if net.targets[k].kind != "norm"}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_scale_weight_norms_caps_each_module(sd15, variant):
    _, net = build(sd15, "sd15", **VARIANTS[variant])
    randomize(net, seed=5)
    before = _norms(net)
    deltas = {k: raw_delta(m) for k, m in net.module_tensors().items()}
    factors = {k: {n: p.detach().clone() for n, p in net.target_params(k).items() if n not in FIXED} for k in before}
    cap = sorted(before.values())[len(before) // 2]  # about half the modules are over it
    over = {k for k, n in before.items() if n > cap}
    scaled, mean_norm, max_norm = net.apply_max_norm(cap)
    after = _norms(net)
    assert scaled == len(over) > 0
    assert max_norm == pytest.approx(max(before.values())) and mean_norm == pytest.approx(
        sum(before.values()) / len(before))
    for key, n in after.items():
        if key in over:
            assert n == pytest.approx(cap, rel=1e-4), key  # scaled back to the cap
            assert rel_err(raw_delta(net.module_tensors()[key]) * before[key] / cap, deltas[key]) < 1e-4, key
            # balanced, as sd-scripts' √ratio on LoRA's two factors: every factor by the same ratio^(1/n)
            ratios = [net.target_params(key)[n].norm().item() / f.norm().item() for n, f in factors[key].items()]
            assert ratios == pytest.approx([(cap / before[key]) ** (1 / len(ratios))] * len(ratios), rel=1e-4), key
        else:
            assert n == pytest.approx(before[key], rel=1e-6), key  # under the cap: untouched
    if variant == "locon-train-norm":  # norm-layer updates are not capped
        norm_keys = [k for k, t in net.targets.items() if t.kind == "norm"]
        assert norm_keys and all(torch.equal(raw_delta(net.module_tensors()[k]), deltas[k]) for k in norm_keys)
