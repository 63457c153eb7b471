"""Merged weights: the ΔW each consumer model computes equals the ΔW LyCORIS's training forward feeds to the layer
(the reference for "what training meant", formats.md §9.3), within 1e-5 relative, for LoRA/LoCon/Tucker/LoHa/LoKr
and input-axis DoRA; output-axis DoRA shows the documented consumer error. The LyCORIS forward is itself
cross-checked against `lycoris.functional` (never its merge helpers, formats.md §6(c))."""

from __future__ import annotations

import copy

import pytest
import torch
from .consumer_fixtures import CONV, DORA_IN, DORA_OUT, LIN, lycoris_reference, rel_err

from loraforge.formats.check import consumer_merged_delta
from loraforge.formats.consumers import a1111, comfyui
from loraforge.formats.consumers import ConsumerMergeError


CASES = [  # (id, algo, layer, rank, kwargs)
    ("lora-linear", "locon", LIN, 4, {}),
    ("locon-conv3x3", "locon", CONV, 4, {}),
    ("locon-tucker", "locon", CONV, 4, {"use_tucker": True}),
    ("loha-linear", "loha", LIN, 4, {}),
    ("loha-conv", "loha", CONV, 4, {}),
    ("loha-tucker", "loha", CONV, 4, {"use_tucker": True}),
    ("lokr-linear-w2-factored", "lokr", LIN, 2, {}),
    ("lokr-linear-both-factored", "lokr", LIN, 2, {"decompose_both": True}),
    ("lokr-linear-both-full", "lokr", LIN, 4, {}),
    ("lokr-conv", "lokr", CONV, 2, {}),
    ("lokr-conv-full", "lokr", CONV, 8, {"full_matrix": True}),
    ("lokr-conv-tucker", "lokr", CONV, 2, {"use_tucker": True}),
    ("dora-in-linear", "locon", LIN, 4, DORA_IN),
    ("dora-in-conv", "locon", CONV, 4, DORA_IN),
    ("dora-in-lokr", "lokr", LIN, 2, DORA_IN),
    ("dora-in-loha-conv", "loha", CONV, 4, DORA_IN),
]


@pytest.fixture(scope="module")
def references():
    out = {}
    for case_id, algo, layer, rank, kw in CASES + OUTPUT_AXIS:
        layer = copy.deepcopy(layer)
        tensors, delta, module = lycoris_reference(algo, layer, rank=rank, alpha=rank / 2, **kw)
        out[case_id] = (layer.weight.detach().clone(), tensors, delta, module)
    return out


OUTPUT_AXIS = [
    ("dora-out-linear", "locon", LIN, 4, DORA_OUT),
    ("dora-out-conv", "locon", CONV, 4, DORA_OUT),
    ("dora-out-lokr", "lokr", LIN, 2, DORA_OUT),
]


@pytest.mark.parametrize("consumer", ["comfyui", "a1111"])
@pytest.mark.parametrize("case_id", [c[0] for c in CASES])
def test_consumer_delta_equals_training_delta(references, case_id, consumer):
    W, tensors, delta, _ = references[case_id]
    assert delta.norm() > 0.05 * W.norm()  # a real update, not an init-time zero
    if consumer == "comfyui" and case_id == "lokr-conv-tucker":
        # ComfyUI feeds the non-contiguous einsum rebuild of a Tucker w2 straight into torch.kron, which raises
        # ("view size is not compatible"); ComfyUI logs the error and leaves the conv unpatched.
        with pytest.raises(ConsumerMergeError, match="view size"):
            consumer_merged_delta(consumer, W, tensors)
        return
    assert rel_err(consumer_merged_delta(consumer, W, tensors), delta) < 1e-5


@pytest.mark.parametrize("case_id", [c[0] for c in OUTPUT_AXIS])
def test_output_axis_dora_is_mis_merged_by_both_consumers(references, case_id):
    W, tensors, delta, _ = references[case_id]
    assert tensors["dora_scale"].shape[0] == W.shape[0]
    for consumer in ("comfyui", "a1111"):
        assert rel_err(consumer_merged_delta(consumer, W, tensors), delta) > 1e-3, consumer


def test_comfyui_output_axis_error_is_the_norm_of_w_not_w_plus_delta(references):
    """The modelled bug: ComfyUI's output-axis DoRA equals the correct DoRA with ‖W‖ in place of ‖W+ΔW‖."""
    W, t, delta, _ = references["dora-out-linear"]
    lora = t["lora_up.weight"] @ t["lora_down.weight"] * (t["alpha"] / t["lora_down.weight"].shape[0])
    expected = (W + lora) * (t["dora_scale"] / (W.norm(dim=1, keepdim=True) + torch.finfo(torch.float32).eps))
    assert rel_err(comfyui.merged_weight(W, t), expected) < 1e-6
    assert rel_err(W + delta, (W + lora) * (t["dora_scale"] / (W + lora).norm(dim=1, keepdim=True))) < 1e-5


def test_reference_matches_lycoris_functional(references):
    from lycoris.functional import locon, loha, lokr
    from lycoris.functional.general import weight_decompose

    W, t, delta, m = references["locon-tucker"]
    ref = locon.diff_weight(t["lora_down.weight"], t["lora_up.weight"], t["lora_mid.weight"], gamma=m.scale)
    assert rel_err(ref.reshape(W.shape), delta) < 1e-5
    for case in ("loha-linear", "loha-conv", "loha-tucker"):
        W, t, delta, m = references[case]
        ref = loha.diff_weight(t["hada_w1_b"], t["hada_w1_a"], t["hada_w2_b"], t["hada_w2_a"], t.get("hada_t1"),
                               t.get("hada_t2"), gamma=m.scale)  # fmt: skip
        assert rel_err(ref.reshape(W.shape), delta) < 1e-5, case
    for case in ("lokr-linear-w2-factored", "lokr-linear-both-factored", "lokr-linear-both-full", "lokr-conv"):
        W, t, delta, m = references[case]
        args = [t.get(k) for k in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")]
        ref = lokr.diff_weight(*args, None, gamma=float(t["alpha"]))  # functional: gamma / rank when factored
        assert rel_err(ref.reshape(W.shape), delta) < 1e-5, case
    for case, on_out in (("dora-in-linear", False), ("dora-in-conv", False), ("dora-out-linear", True)):
        W, t, delta, m = references[case]
        lora = locon.diff_weight(t["lora_down.weight"], t["lora_up.weight"], None, gamma=m.scale).reshape(W.shape)
        ref = weight_decompose(W + lora, t["dora_scale"], 1.0, on_out) - W
        assert rel_err(ref, delta) < 1e-5, case


def test_lokr_alpha_rule():
    """alpha/rank only when a half is factored; both halves full -> scale 1 whatever alpha says."""
    W = torch.randn(8, 6)
    w1, w2 = torch.randn(2, 2), torch.randn(4, 3)
    for consumer in ("comfyui", "a1111"):
        full = {"lokr_w1": w1, "lokr_w2": w2, "alpha": torch.tensor(7.0)}
        assert rel_err(consumer_merged_delta(consumer, W, full), torch.kron(w1, w2)) < 1e-6
        w2a, w2b = torch.randn(4, 2), torch.randn(2, 3)
        factored = {"lokr_w1": w1, "lokr_w2_a": w2a, "lokr_w2_b": w2b, "alpha": torch.tensor(1.0)}
        assert rel_err(consumer_merged_delta(consumer, W, factored), torch.kron(w1, w2a @ w2b) / 2) < 1e-6


def test_strength_and_missing_alpha():
    W = torch.randn(8, 6)
    t = {"lora_up.weight": torch.randn(8, 2), "lora_down.weight": torch.randn(2, 6), "alpha": torch.tensor(1.0)}
    lora = t["lora_up.weight"] @ t["lora_down.weight"]
    assert rel_err(comfyui.merged_weight(W, t, 0.5) - W, 0.25 * lora) < 1e-6
    assert rel_err(a1111.merged_weight(W, t, 0.5) - W, 0.25 * lora) < 1e-6
    no_alpha = {k: v for k, v in t.items() if k != "alpha"}
    for consumer in ("comfyui", "a1111", "diffusers"):
        assert rel_err(consumer_merged_delta(consumer, W, no_alpha), lora) < 1e-6  # scale 1.0


def test_shape_mismatch_is_not_applied():
    W = torch.randn(8, 6)
    t = {"lora_up.weight": torch.randn(8, 2), "lora_down.weight": torch.randn(2, 5), "alpha": torch.tensor(1.0)}
    for consumer in ("comfyui", "a1111", "diffusers"):
        with pytest.raises(ConsumerMergeError):
            consumer_merged_delta(consumer, W, t)


def test_one_dim_dora_scale():
    """PEFT-style 1-D magnitudes: ComfyUI takes a square layer's [in] vector for the output axis (wrong weights);
    on a 1x1 conv both consumers broadcast it into a tensor of the wrong shape (the layer is not patched)."""
    W = torch.randn(8, 8)
    t = {"lora_up.weight": torch.randn(8, 2), "lora_down.weight": torch.randn(2, 8), "alpha": torch.tensor(2.0)}
    good = dict(t, dora_scale=W.norm(dim=0, keepdim=True) * 1.1)  # input axis [1, in]
    flat = dict(t, dora_scale=good["dora_scale"].flatten())
    assert rel_err(consumer_merged_delta("comfyui", W, flat), consumer_merged_delta("comfyui", W, good)) > 1e-3
    assert rel_err(consumer_merged_delta("a1111", W, flat), consumer_merged_delta("a1111", W, good)) < 1e-6
    conv = W[:, :, None, None]
    conv_t = {k: (v[:, :, None, None] if k.startswith("lora_") else v) for k, v in flat.items()}
    for consumer in ("comfyui", "a1111"):
        with pytest.raises(ConsumerMergeError):
            consumer_merged_delta(consumer, conv, conv_t)


def test_diffusers_delta_is_plain_lora_and_refuses_loha():
    W = torch.randn(8, 6)
    t = {"lora_up.weight": torch.randn(8, 2), "lora_down.weight": torch.randn(2, 6), "alpha": torch.tensor(1.0)}
    dora = dict(t, dora_scale=torch.rand(1, 6) + 1)
    assert rel_err(consumer_merged_delta("diffusers", W, dora), t["lora_up.weight"] @ t["lora_down.weight"] / 2) < 1e-6
    loha = {"hada_w1_a": torch.randn(8, 2), "hada_w1_b": torch.randn(2, 6), "hada_w2_a": torch.randn(8, 2),
            "hada_w2_b": torch.randn(2, 6), "alpha": torch.tensor(2.0)}  # fmt: skip
    with pytest.raises(ConsumerMergeError, match="LoHa"):
        consumer_merged_delta("diffusers", W, loha)
