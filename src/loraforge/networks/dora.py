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

The training forward is ours (`forward`), not LyCORIS' weight rebuild, which keeps three full-size tensors per module
for backward (W + ΔW, the rescaled weight and its difference to W). As in the DoRA paper (§4.3) and peft's
`DoraLinearLayer`, the norm ‖W + ΔW‖ is treated as a constant in backward (computed without gradient, then freed),
and the rescaling is applied to activations instead of weights: per output row, y = s ⊙ (W x + ΔW x) + b; per input
column, y = W (s ⊙ x) + b + ΔW (s ⊙ x) with s folded into the small down factor, s = m / (‖W + ΔW‖ + eps). The output
is the same as the weight rebuild's; the gradients of the factors lack the norm's own term (the paper's and peft's
choice), the magnitude's gradient is the same.
"""

from __future__ import annotations

import logging
import types

import torch
import torch.nn.functional as F

from ..adapters import AdapterModule, axis_norm, raw_delta
from ..adapters.math import EPS
from .locon import LoconMethod
from .targets import Target

log = logging.getLogger(__name__)


class DoraMethod(LoconMethod):
    algo = "dora"
    module_path = "lycoris.kohya"
    bypass = False  # LyCORIS' weight-rebuild mode; its forward is replaced by ours (`forward` below)

    def build(self, target: Target, cfg) -> torch.nn.Module:
        module = super().build(target, cfg)
        weight = target.module.weight.detach().float()
        module.wd = True
        module.wd_on_out = cfg.dora_axis == "output"
        module.dora_norm_dims = weight.dim() - 1
        module.dora_scale = torch.nn.Parameter(axis_norm(weight, cfg.dora_axis))
        module.forward = types.MethodType(forward, module)
        return module

    def export(self, module) -> dict[str, torch.Tensor]:
        out = super().export(module)
        out["dora_scale"] = module.dora_scale.detach().float().cpu().clone()
        return out

    def algo_args(self, cfg) -> dict[str, object]:
        return {"algo": "lora", "dora_wd": True, "wd_on_output": cfg.dora_axis == "output"}

    def diffusers_support(self, network) -> str | None:
        return "diffusers drops dora_scale and would apply a plain LoRA (different weights)"


def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """The DoRA output of LyCORIS' weight-rebuild forward (module dropout, then rank dropout masking ΔW's rows, with
    LyCORIS' random draws in its order) with the norm detached and no full-size tensor kept for backward."""
    if self.module_dropout and self.training and torch.rand(1) < self.module_dropout:
        return self.org_forward(x, *args, **kwargs)
    weight = self._current_weight()
    out_dims = None if self.module_type == "linear" else [1] * (x.dim() - 2)  # a conv activation's spatial dims
    gain = self.scale * self.scalar.to(x.device)
    drop = None
    with torch.no_grad():
        delta = _delta(self).reshape(weight.shape)
        if self.training and self.rank_dropout:
            drop = (torch.rand(delta.shape[0], device=x.device) > self.rank_dropout).float()
            if self.rank_dropout_scale:
                drop /= drop.mean()
            delta *= drop.reshape(-1, *[1] * (delta.dim() - 1))
        norm = axis_norm(weight.float() + delta * gain, "output" if self.wd_on_out else "input") + EPS
        del delta
    s = self.dora_scale / norm
    if self.multiplier != 1:
        s = self.multiplier * (s - 1) + 1
    if self.wd_on_out:
        lowrank = _low_rank(self, x, self.lora_down.weight) * gain.to(x.dtype)
        if drop is not None:
            lowrank = lowrank * _channels(drop, out_dims).to(x.dtype)
        out = (self.op(x, weight.to(x.dtype), None, **self.kw_dict) + lowrank) * _channels(s, out_dims).to(x.dtype)
        bias = self._current_bias()
        return out if bias is None else out + _channels(bias, out_dims).to(out.dtype)
    s_in = s.reshape(-1)
    down = self.lora_down.weight * s_in.reshape(1, -1, *[1] * (self.lora_down.weight.dim() - 2))
    lowrank = _low_rank(self, x, down) * gain.to(x.dtype)
    if drop is not None:
        lowrank = lowrank * _channels(drop, out_dims).to(x.dtype)
    return self.org_forward(x * _channels(s_in, out_dims).to(x.dtype), *args, **kwargs) + lowrank


def _delta(module) -> torch.Tensor:
    """up ∘ (mid) ∘ down of a LoCon module, float32, flat [out, in·k·k] (scale and scalar not applied)."""
    tensors = {"lora_up.weight": module.lora_up.weight, "lora_down.weight": module.lora_down.weight}
    if module.tucker:
        tensors["lora_mid.weight"] = module.lora_mid.weight
    return raw_delta(AdapterModule("", tensors))


def _channels(v: torch.Tensor, spatial: list[int] | None) -> torch.Tensor:
    """A per-channel vector shaped to broadcast against an activation (channels last for linear layers, second for
    convolutions: `spatial` ones after them)."""
    return v.reshape(-1) if spatial is None else v.reshape(1, -1, *spatial)


def _low_rank(module, x: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """up(mid(down(x))) with the given down weight (LyCORIS' bypass path without its dropouts)."""
    if module.module_type == "linear":
        return F.linear(F.linear(x, down.to(x.dtype)), module.lora_up.weight.to(x.dtype))
    h = module.lora_down._conv_forward(x, down.to(x.dtype), None)
    if module.tucker:
        h = module.lora_mid._conv_forward(h, module.lora_mid.weight.to(x.dtype), None)
    return module.lora_up._conv_forward(h, module.lora_up.weight.to(x.dtype), None)


def warn_output_axis(cfg) -> None:
    if cfg.algo == "dora" and cfg.dora_axis == "output":
        log.warning(
            "network.dora_axis = 'output': ComfyUI 0.19.3 mis-merges output-axis DoRA (it normalises by ‖W‖, not "
            "‖W+ΔW‖) and AUTOMATIC1111 1.10.1 has no output axis (wrong weights); Forge/reForge and LyCORIS load it. "
            "Use 'input' for files every consumer reproduces exactly."
        )
