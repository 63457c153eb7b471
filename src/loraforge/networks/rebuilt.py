"""`op(x, ΔW)` for adapters whose ΔW is full-size but cheap to rebuild from small factors (LoHa), without keeping ΔW
for backward.

LyCORIS' bypass forward for LoHa computes ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b) and then `F.linear(x, ΔW)` /
`F.conv2d(x, ΔW)`: autograd keeps ΔW (a copy of the weight's size, per module) until backward needs it for the input
gradient. `rebuilt_op` keeps only x and the factors instead and rebuilds ΔW in backward, where it lives only while
that module's gradients are computed: the same numbers, one extra small rebuild per module and step (2·out·in·rank
multiply-adds per factor pair), no full-size tensor held between forward and backward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

CONV_OPS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}


def supported(op, kw: dict) -> bool:
    """Whether `rebuilt_op` computes this layer's gradients: linear, and convolutions with numeric padding."""
    return op is F.linear or (op in CONV_OPS and not isinstance(kw.get("padding", 0), str))


class _RebuiltWeightOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, op, kw, rebuild, *factors):
        ctx.op, ctx.kw, ctx.rebuild = op, kw, rebuild
        ctx.save_for_backward(x, *factors)
        with torch.no_grad():
            delta = rebuild(*factors)
        return op(x, delta.to(x.dtype), None, **kw)

    @staticmethod
    def backward(ctx, grad):
        x, *factors = ctx.saved_tensors
        with torch.enable_grad():
            leaves = [f.detach().requires_grad_(f.requires_grad) for f in factors]
            delta = ctx.rebuild(*leaves)
        weight = delta.detach().to(grad.dtype)
        need_x = ctx.needs_input_grad[0]
        if ctx.op is F.linear:
            grad_x = grad @ weight if need_x else None
            grad_w = grad.reshape(-1, grad.shape[-1]).T @ x.reshape(-1, x.shape[-1]).to(grad.dtype)
        else:
            n, kw = CONV_OPS[ctx.op], ctx.kw
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                grad, x.to(grad.dtype), weight, None,
                _expand(kw["stride"], n), _expand(kw["padding"], n), _expand(kw["dilation"], n),
                False, [0] * n, kw["groups"], [need_x, True, False],
            )
        trainable = [leaf for leaf in leaves if leaf.requires_grad]
        grads = iter(torch.autograd.grad(delta, trainable, grad_w.to(delta.dtype)) if trainable else ())
        factor_grads = [next(grads) if leaf.requires_grad else None for leaf in leaves]
        return (grad_x, None, None, None, *factor_grads)


def _expand(value, n: int) -> list[int]:
    return list(value) if isinstance(value, (tuple, list)) else [int(value)] * n


def rebuilt_op(x: torch.Tensor, op, kw: dict, rebuild: Callable[..., torch.Tensor], *factors: torch.Tensor):
    """`op(x, rebuild(*factors), **kw)` (no bias) whose backward rebuilds the weight instead of saving it. `rebuild`
    must be a pure function of `factors` (tensors: parameters, or fixed masks that do not require grad)."""
    return _RebuiltWeightOp.apply(x, op, kw, rebuild, *factors)
