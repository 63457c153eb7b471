"""`dora`: weight-decomposed LoRA / LoCon (DoRA) on LyCORIS `LoConModule`, with the magnitude axis chosen here.

W' = (W + ΔW) · m / ‖W + ΔW‖, the norm taken per input column (`dora_axis = "input"`, default) or per output row
(`"output"`), m = `dora_scale` trained from ‖W‖ on the same axis. ΔW is the LoCon update (scale, scalar, Tucker).

Why input by default (formats.md §1 rule 5, §4.2): ComfyUI 0.19.3 and AUTOMATIC1111 1.10.1 reproduce input-axis
DoRA exactly; with an output-axis `dora_scale` ComfyUI normalises by ‖W‖ instead of ‖W+ΔW‖ (about 10-30 % ΔW error)
and A1111 broadcasts [out,1] against its column norm (wrong weights). The output axis is the paper's (and LyCORIS ≥
3.2's default); choose it only for consumers that handle it (Forge/reForge, LyCORIS itself). Either way the file
holds a keep-dim `dora_scale` ([1, in(, 1, 1)] or [out, 1(, 1, 1)]), never PEFT's 1-D magnitude. diffusers drops
`dora_scale` (it would load a plain LoRA), so no diffusers file is written for DoRA.

The magnitude is created here rather than by LyCORIS' `weight_decompose=True`: LyCORIS reads the base weight on the
CPU, which fails for meta-device models; the formula is the same.
"""

from __future__ import annotations

import logging

import torch

from ..adapters import axis_norm
from .locon import LoconMethod
from .targets import Target

log = logging.getLogger(__name__)


class DoraMethod(LoconMethod):
    algo = "dora"
    module_path = "lycoris.kohya"
    bypass = False  # the decomposition needs W + ΔW: LyCORIS' weight-rebuild forward

    def build(self, target: Target, cfg) -> torch.nn.Module:
        module = super().build(target, cfg)
        weight = target.module.weight.detach().float()
        module.wd = True
        module.wd_on_out = cfg.dora_axis == "output"
        module.dora_norm_dims = weight.dim() - 1
        module.dora_scale = torch.nn.Parameter(axis_norm(weight, cfg.dora_axis))
        return module

    def export(self, module) -> dict[str, torch.Tensor]:
        out = super().export(module)
        out["dora_scale"] = module.dora_scale.detach().float().cpu().clone()
        return out

    def algo_args(self, cfg) -> dict[str, object]:
        return {"algo": "lora", "dora_wd": True, "wd_on_output": cfg.dora_axis == "output"}

    def diffusers_support(self, network) -> str | None:
        return "diffusers drops dora_scale and would apply a plain LoRA (different weights)"


def warn_output_axis(cfg) -> None:
    if cfg.algo == "dora" and cfg.dora_axis == "output":
        log.warning(
            "network.dora_axis = 'output': ComfyUI 0.19.3 mis-merges output-axis DoRA (it normalises by ‖W‖, not "
            "‖W+ΔW‖) and AUTOMATIC1111 1.10.1 has no output axis (wrong weights); Forge/reForge and LyCORIS load it. "
            "Use 'input' for files every consumer reproduces exactly."
        )
