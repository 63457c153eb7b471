"""`lokr`: LoRA with a Kronecker product (LyCORIS `LokrModule`).

Each dimension is split in two (`factor`; -1 balances them): out = a·b, in = c·d, ΔW = scale · scalar ·
kron(w1 [a, c], w2 [b, d(, k, k)]). w2 is low-rank (`lokr_w2_a` [b, r] @ `lokr_w2_b` [r, d·k·k], or a Tucker core
`lokr_t2` with [r, b] / [r, d] factors) unless the rank is at least half of its larger side or `full_matrix` is set;
`decompose_both` makes w1 low-rank too. Consumers scale by alpha / rank only when a half is low-rank, else by 1
(formats.md §4.4). LyCORIS forces alpha = rank for two full halves but still applies √rank with rsLoRA there; we set
the scale to 1 in that case so training and every consumer agree. The file stores w1 × scalar.

The training forward is LyCORIS' bypass (W x + ΔW x with ΔW x as a chain of small products on x, never building
kron(w1, w2)), recomputed in backward (`bypass_forward_diff`): the chain's activation-sized intermediates are not
kept, only x (which the frozen layer keeps anyway) and the factors (docs/benchmarks.md, "LoKr memory").
"""

from __future__ import annotations

import types

import torch
from torch.utils.checkpoint import checkpoint

from .lycoris_engine import Method, common_kwargs, cpu, scalar_of
from .targets import Target


def _tensors(module) -> dict[str, torch.Tensor]:
    t = {}
    if module.use_w1:
        t["lokr_w1"] = module.lokr_w1
    else:
        t["lokr_w1_a"], t["lokr_w1_b"] = module.lokr_w1_a, module.lokr_w1_b
    if module.use_w2:
        t["lokr_w2"] = module.lokr_w2
    else:
        t["lokr_w2_a"], t["lokr_w2_b"] = module.lokr_w2_a, module.lokr_w2_b
        if module.tucker:
            t["lokr_t2"] = module.lokr_t2
    return t


class LokrMethod(Method):
    algo = "lokr"

    def build(self, target: Target, cfg) -> torch.nn.Module:
        from lycoris.modules.lokr import LokrModule

        module = LokrModule(
            target.path,
            target.module,
            dropout=0.0,
            factor=cfg.factor,
            decompose_both=cfg.decompose_both,
            full_matrix=cfg.full_matrix,
            **common_kwargs(target, cfg),
        )
        if module.use_w1 and module.use_w2:
            module.scale = 1.0  # what consumers apply to two full halves, whatever alpha or rs_lora say
        if cfg.dropout:
            module.drop = torch.nn.Dropout(cfg.dropout)
        module.bypass_forward_diff = types.MethodType(bypass_forward_diff, module)
        return module

    def norm_factors(self, module) -> list[torch.Tensor]:
        return list(_tensors(module).values())  # ΔW = w1 ⊗ w2, each half a product of these

    def export(self, module) -> dict[str, torch.Tensor]:
        out = {k: cpu(v) for k, v in _tensors(module).items()}
        first = "lokr_w1" if module.use_w1 else "lokr_w1_a"
        out[first] = cpu(out[first] * scalar_of(module).cpu())
        return out

    def algo_args(self, cfg) -> dict[str, object]:
        args: dict[str, object] = {"algo": "lokr", "factor": cfg.factor}
        if cfg.decompose_both:
            args["decompose_both"] = True
        if cfg.full_matrix:
            args["full_matrix"] = True
        return args


def bypass_forward_diff(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """LyCORIS' `LokrModule.bypass_forward_diff`, recomputed in backward when gradients are recorded: autograd keeps
    x and the factors instead of the chain's intermediates (each as large as the layer's input or output). The same
    numbers and gradients; the chain runs twice (small products, a fraction of the frozen layer's cost). The dropout
    draws repeat in the recomputation (the checkpoint restores the random state)."""
    lycoris = type(self).bypass_forward_diff
    if not torch.is_grad_enabled():
        return lycoris(self, x, scale)
    return checkpoint(lycoris, self, x, scale, use_reentrant=False)
