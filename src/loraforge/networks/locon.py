"""`locon`: LoRA on linear, 1×1 and k×k layers (LyCORIS `LoConModule`, sd-scripts' LoRA-C3Lier).

Linear: down [r, in], up [out, r]. k×k conv: down is a conv with the layer's kernel, stride and padding [r, in, k, k],
up a 1×1 conv [out, r, 1, 1]; with `use_tucker` the down becomes 1×1 [r, in, 1, 1] and a k×k core `lora_mid`
[r, r, k, k] sits between. ΔW = scale · scalar · up ∘ (mid) ∘ down, scale = alpha / rank (alpha / √rank with
rsLoRA). The file stores `lora_up` multiplied by the scalar, so consumers need no scalar key (formats.md §3, §4.1);
ΔW is computed from the exported tensors by `loraforge.adapters`.
"""

from __future__ import annotations

import torch

from .lycoris_engine import Method, common_kwargs, cpu, scalar_of
from .targets import Target


class LoconMethod(Method):
    algo = "locon"
    module_path = "networks.lora"  # sd-scripts loads plain LoCon files (not Tucker ones) with networks.lora
    up_param_names = ("lora_up",)
    bypass = True

    def build(self, target: Target, cfg) -> torch.nn.Module:
        from lycoris.modules.locon import LoConModule

        kwargs = common_kwargs(target, cfg, bypass=self.bypass)
        return LoConModule(target.path, target.module, dropout=cfg.dropout, **kwargs)

    def export(self, module) -> dict[str, torch.Tensor]:
        out = {
            "lora_down.weight": cpu(module.lora_down.weight),
            "lora_up.weight": cpu(module.lora_up.weight * scalar_of(module)),
        }
        if module.tucker:
            out["lora_mid.weight"] = cpu(module.lora_mid.weight)
        return out

    def norm_factors(self, module) -> list[torch.Tensor]:
        mid = [module.lora_mid.weight] if module.tucker else []
        return [module.lora_up.weight, module.lora_down.weight, *mid]

    def algo_args(self, cfg) -> dict[str, object]:
        # files sd-scripts' networks.lora reads carry no algo; Tucker files need LyCORIS
        return {"algo": "locon"} if cfg.use_tucker or cfg.train_norm else {}

    def diffusers_support(self, network) -> str | None:
        if any(getattr(m, "tucker", False) for m in network.adapters.values()):
            return "diffusers cannot load LoCon files with Tucker cores (lora_mid, from network.use_tucker)"
        return None
