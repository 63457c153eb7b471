"""`loha`: LoRA with a Hadamard product (LyCORIS `LohaModule`; FedPara).

ΔW = scale · scalar · (w1_a @ w1_b) ⊙ (w2_a @ w2_b), w?_a [out, r], w?_b [r, in·k·k]; with `use_tucker` on a k×k conv
each factor is `einsum(t, w_b, w_a)` with cores `hada_t?` [r, r, k, k], `hada_w?_a` [r, out], `hada_w?_b` [r, in].
Consumers scale by alpha / `hada_w1_b.shape[0]` (formats.md §4.3). The file stores `hada_w1_a` × scalar.
"""

from __future__ import annotations

import torch

from .lycoris_engine import Method, common_kwargs, cpu, scalar_of
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
