"""`lokr`: LoRA with a Kronecker product (LyCORIS `LokrModule`).

Each dimension is split in two (`factor`; -1 balances them): out = a·b, in = c·d, ΔW = scale · scalar ·
kron(w1 [a, c], w2 [b, d(, k, k)]). w2 is low-rank (`lokr_w2_a` [b, r] @ `lokr_w2_b` [r, d·k·k], or a Tucker core
`lokr_t2` with [r, b] / [r, d] factors) unless the rank is at least half of its larger side or `full_matrix` is set;
`decompose_both` makes w1 low-rank too. Consumers scale by alpha / rank only when a half is low-rank, else by 1
(formats.md §4.4). LyCORIS forces alpha = rank for two full halves but still applies √rank with rsLoRA there; we set
the scale to 1 in that case so training and every consumer agree. The file stores w1 × scalar.
"""

from __future__ import annotations

import torch

from .lycoris_engine import Method, common_kwargs, cpu, scalar_of
from .targets import Target


def lokr_delta(t: dict[str, torch.Tensor], shape) -> torch.Tensor:
    """kron(w1, w2) as a weight of `shape` (no scale)."""
    w1 = t["lokr_w1"].float() if "lokr_w1" in t else t["lokr_w1_a"].float() @ t["lokr_w1_b"].float()
    if "lokr_w2" in t:
        w2 = t["lokr_w2"].float()
    elif "lokr_t2" in t:  # core [r, r, k, k], w2_a [r, b], w2_b [r, d] -> [b, d, k, k]
        w2 = torch.einsum("ijkl,ip,jr->prkl", t["lokr_t2"].float(), t["lokr_w2_a"].float(), t["lokr_w2_b"].float())
    else:
        w2 = t["lokr_w2_a"].float() @ t["lokr_w2_b"].float()
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    return torch.kron(w1, w2.contiguous()).reshape(shape)


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
        return module

    def export(self, module) -> dict[str, torch.Tensor]:
        out = {k: cpu(v) for k, v in _tensors(module).items()}
        first = "lokr_w1" if module.use_w1 else "lokr_w1_a"
        out[first] = cpu(out[first] * scalar_of(module).cpu())
        return out

    def delta(self, module) -> torch.Tensor:
        return lokr_delta(_tensors(module), module.shape) * (module.scale * scalar_of(module))

    def algo_args(self, cfg) -> dict[str, object]:
        args: dict[str, object] = {"algo": "lokr", "factor": cfg.factor}
        if cfg.decompose_both:
            args["decompose_both"] = True
        if cfg.full_matrix:
            args["full_matrix"] = True
        return args
