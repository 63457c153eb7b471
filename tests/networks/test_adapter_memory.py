"""DoRA's, LoHa's and LoKr's training forwards keep no full-size weight copy for backward (issue 13): the same outputs as
LyCORIS' forwards, the same gradients (DoRA: with the norm ‖W + ΔW‖ detached, the paper's and peft's choice), and the
tensors autograd saves about as large as LoRA's."""

from __future__ import annotations

import pytest
import torch

from loraforge.adapters import axis_norm
from loraforge.adapters.math import EPS
from loraforge.networks import create_network
from loraforge.networks.targets import Target

from .helpers import network_config

LINEAR = (torch.nn.Linear, (96, 80), (2, 24, 96))
CONV = (torch.nn.Conv2d, (24, 32, 3), (2, 24, 8, 8))


def _layer(kind):
    cls, args, x_shape = kind
    torch.manual_seed(0)
    layer = cls(*args, **({"padding": 1} if cls is torch.nn.Conv2d else {})).requires_grad_(False)
    x = torch.randn(x_shape, requires_grad=True)
    return layer, x


def _adapter(layer, algo, **overrides):
    """One LyCORIS module of `algo` on `layer` (rank 4, alpha 2), applied, with random (trained-looking) factors."""
    cfg = network_config("sd15", **{"network.algo": algo, "network.rank": 4, "network.alpha": 2.0, **overrides})
    kind = "linear" if isinstance(layer, torch.nn.Linear) else "conv"
    module = create_network(cfg).method.build(Target("unet", "layer", layer, kind, 4, 2.0), cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name == "dora_scale":
                p.mul_(1 + 0.2 * torch.rand(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    module.apply_to()
    return module


def _grads(fn, x, module):
    x.grad = None
    module.zero_grad()
    out = fn()
    out.backward(torch.cos(out.detach()))
    return out.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in module.named_parameters()}


def _assert_same(a, b):
    out_a, gx_a, gp_a = a
    out_b, gx_b, gp_b = b
    torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_a, gx_b, rtol=1e-5, atol=1e-5)
    assert gp_a.keys() == gp_b.keys()
    for name in gp_a:
        torch.testing.assert_close(gp_a[name], gp_b[name], rtol=1e-4, atol=1e-5, msg=name)


def _saved_bytes(fn, exclude) -> int:
    """Bytes of the distinct storages autograd saves for backward during `fn`, parameters and buffers left out."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    saved = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(saved.values())


@pytest.mark.parametrize("kind, tucker", [(LINEAR, False), (CONV, False), (CONV, True)],
                         ids=["linear", "conv", "conv-tucker"])
def test_loha_matches_lycoris_forward_and_gradients(kind, tucker):
    layer, x = _layer(kind)
    module = _adapter(layer, "loha", **({"network.use_tucker": True} if tucker else {}))
    assert module.tucker == tucker
    ours = _grads(lambda: layer(x), x, module)
    # LyCORIS' own bypass forward: the class's method, not the instance's replacement
    theirs = _grads(lambda: module.org_forward(x) + type(module).bypass_forward_diff(module, x), x, module)
    _assert_same(ours, theirs)


@pytest.mark.parametrize("kind, overrides", [(LINEAR, {}), (LINEAR, {"network.decompose_both": True}), (CONV, {}),
                                             (LINEAR, {"network.dropout": 0.5})],
                         ids=["linear", "linear-both", "conv", "linear-dropout"])
def test_lokr_matches_lycoris_forward_and_gradients(kind, overrides):
    layer, x = _layer(kind)
    module = _adapter(layer, "lokr", **overrides)
    module.train()
    torch.manual_seed(3)  # the dropout's draw: the recomputation in backward must repeat it
    ours = _grads(lambda: layer(x), x, module)
    torch.manual_seed(3)
    theirs = _grads(lambda: module.org_forward(x) + type(module).bypass_forward_diff(module, x), x, module)
    _assert_same(ours, theirs)


@pytest.mark.parametrize("kind", [LINEAR, CONV], ids=["linear", "conv"])
@pytest.mark.parametrize("axis", ["input", "output"])
def test_dora_matches_the_weight_rebuild_with_the_norm_detached(kind, axis):
    layer, x = _layer(kind)
    module = _adapter(layer, "dora", **{"network.dora_axis": axis})
    ours = _grads(lambda: layer(x), x, module)
    # forward: LyCORIS' weight-rebuild forward (the class's method), to 1e-5
    with torch.no_grad():
        torch.testing.assert_close(ours[0], type(module).forward(module, x), rtol=1e-5, atol=1e-5)

    def reference():  # W' = (W + ΔW) · m / ‖W + ΔW‖ with the norm a constant in backward
        merged = layer.weight + module.get_diff_weight()[0].reshape(layer.weight.shape)
        norm = axis_norm(merged.detach(), axis) + EPS
        return module.op(x, merged * (module.dora_scale / norm), layer.bias, **module.kw_dict)

    _assert_same(ours, _grads(reference, x, module))


@pytest.mark.parametrize("algo", ["dora", "loha"])
def test_rank_dropout_draws_the_same_mask_as_lycoris(algo):
    layer, x = _layer(LINEAR)
    module = _adapter(layer, algo, **{"network.rank_dropout": 0.5})
    module.train()
    lycoris_forward = (type(module).forward if algo == "dora" else
                       lambda m, x: m.org_forward(x) + type(m).bypass_forward_diff(m, x))
    torch.manual_seed(5)
    ours = layer(x)
    torch.manual_seed(5)
    theirs = lycoris_forward(module, x)
    torch.manual_seed(6)
    other = layer(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, other)  # the mask does act


def test_saved_tensors_close_to_loras():
    """What autograd keeps for backward on one linear layer (activations only: the parameters are not counted):
    LoHa, LoKr and input-axis DoRA within 1.1× of LoCon (LoRA through LyCORIS), where LyCORIS' forwards kept 3×
    (LoHa), 2× (LoKr) and 5× (DoRA)."""
    layer, x = _layer((torch.nn.Linear, (256, 256), (2, 64, 256)))
    sizes = {}
    for algo in ("locon", "dora", "loha", "lokr"):
        module = _adapter(layer, algo)
        exclude = [*module.parameters(), *module.buffers(), *layer.parameters()]
        lycoris = type(module).forward if algo == "dora" else (
            lambda m, x: m.org_forward(x) + type(m).bypass_forward_diff(m, x))
        sizes[algo] = _saved_bytes(lambda: layer(x), exclude)
        sizes[algo + " (LyCORIS)"] = _saved_bytes(lambda: lycoris(module, x), exclude)
        module.restore()
    lora = sizes["locon"]
    assert sizes["dora (LyCORIS)"] >= 4.5 * lora and sizes["loha (LyCORIS)"] >= 2.9 * lora, sizes
    assert sizes["lokr (LyCORIS)"] >= 1.9 * lora, sizes
    assert sizes["dora"] <= 1.1 * lora and sizes["loha"] <= 1.1 * lora and sizes["lokr"] <= 1.1 * lora, sizes
