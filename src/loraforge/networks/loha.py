"""`loha`: LoRA with a Hadamard product (LyCORIS `LohaModule`; FedPara).

ΔW = scale · scalar · (w1_a @ w1_b) ⊙ (w2_a @ w2_b), w?_a [out, r], w?_b [r, in·k·k]; with `use_tucker` on a k×k conv
each factor is `einsum(t, w_b, w_a)` with cores `hada_t?` [r, r, k, k], `hada_w?_a` [r, out], `hada_w?_b` [r, in].
Consumers scale by alpha / `hada_w1_b.shape[0]` (formats.md §4.3). The file stores `hada_w1_a` × scalar.
"""

from __future__ import annotations

import functools
import types

import torch

from ..adapters import AdapterModule, raw_delta
from .lycoris_engine import Method, common_kwargs, cpu, scalar_of
from .rebuilt import rebuilt_op, supported
from .targets import Target

_NAMES = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


class LohaMethod(Method):
    algo = "loha"
    up_param_names = ("hada_w1_a", "hada_w2_a")  # the output-side factors (LoRA+)

    def build(self, target: Target, cfg) -> torch.nn.Module:
        from lycoris.modules.loha import LohaModule

        module = LohaModule(target.path, target.module, dropout=0.0, **common_kwargs(target, cfg))
        if cfg.dropout:  # LyCORIS applies `drop` to the bypass output; passing dropout only prints a warning
            module.drop = torch.nn.Dropout(cfg.dropout)
        if supported(module.op, module.kw_dict):
            module.bypass_forward_diff = types.MethodType(bypass_forward_diff, module)
        return module

    def norm_factors(self, module) -> list[torch.Tensor]:
        cores = [module.hada_t1, module.hada_t2] if module.tucker else []
        return [getattr(module, name) for name in _NAMES] + cores

    def export(self, module) -> dict[str, torch.Tensor]:
        out = {name: cpu(getattr(module, name)) for name in _NAMES}
        out["hada_w1_a"] = cpu(module.hada_w1_a * scalar_of(module))
        if module.tucker:
            out["hada_t1"], out["hada_t2"] = cpu(module.hada_t1), cpu(module.hada_t2)
        return out


def bypass_forward_diff(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """LyCORIS' `LohaModule.bypass_forward_diff` (`drop(op(x, ΔW))`, rank dropout masking ΔW's rows) without keeping
    the full-size ΔW for backward: `rebuilt_op` keeps the factors and rebuilds ΔW there (docs/benchmarks.md)."""
    names = _NAMES + (("hada_t1", "hada_t2") if self.tucker else ())
    factors = [getattr(self, name) for name in names] + [self.scalar.to(x.device)]
    if self.training and self.rank_dropout:  # the same draw as LyCORIS' get_weight
        drop = (torch.rand(self.shape[0]) > self.rank_dropout).float()
        if self.rank_dropout_scale:
            drop /= drop.mean()
        factors.append(drop.to(x.device))
    rebuild = functools.partial(_delta, names, tuple(self.shape), self.scale * scale)
    return self.drop(rebuilt_op(x, self.op, self.kw_dict, rebuild, *factors))


def _delta(names, shape, gamma, *tensors) -> torch.Tensor:
    """ΔW = gamma · scalar · (w1_a @ w1_b) ⊙ (w2_a @ w2_b) (× the rank-dropout row mask), float32, in `shape`."""
    delta = raw_delta(AdapterModule("", dict(zip(names, tensors)))).reshape(shape) * gamma * tensors[len(names)]
    if len(tensors) > len(names) + 1:
        delta = delta * tensors[-1].reshape(-1, *[1] * (len(shape) - 1))
    return delta
