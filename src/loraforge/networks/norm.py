"""`train_norm`: trained offsets of the UNet's GroupNorm / LayerNorm weights and biases (LyCORIS `NormModule`).

W' = W + w_norm, b' = b + b_norm; the file stores `w_norm` and `b_norm` (no alpha), which ComfyUI and A1111 add as
plain diffs (formats.md §3, §4.7). LyCORIS' norm rank dropout keeps the wrong entries (`rand < p`), so it is never
passed; module dropout is.
"""

from __future__ import annotations

import torch

from .targets import Target


def build_norm(target: Target, cfg) -> torch.nn.Module:
    from lycoris.modules.norms import NormModule

    return NormModule(target.path, target.module, multiplier=1.0, rank_dropout=0.0, module_dropout=cfg.module_dropout)


def export_norm(module) -> dict[str, torch.Tensor]:
    out = {"w_norm": module.w_norm.detach().float().cpu().clone()}
    if getattr(module, "b_norm", None) is not None:
        out["b_norm"] = module.b_norm.detach().float().cpu().clone()
    return out

