"""`lora`: LoRA on linear and 1×1 layers, through peft (the engine diffusers itself loads LoRA with).

peft injects `LoraLayer`s into the diffusers UNet and the transformers CLIP models, which keeps the diffusers
save/load path exact (`pipe.load_lora_weights` reproduces the trained model bit for bit); the kohya file is derived
from the same tensors by `loraforge.formats.kohya`. Presets and block-wise ranks become an explicit list of module
paths with peft's `rank_pattern` / `alpha_pattern`.
"""

from __future__ import annotations

import math

import torch

from ..adapters import AdapterModule, module_delta
from .base import PlannedNetwork
from .targets import Target

ADAPTER = "default"


def _lora_layers(module: torch.nn.Module):
    from peft.tuners.lora import LoraLayer

    for name, m in module.named_modules():
        if isinstance(m, LoraLayer) and ADAPTER in m.lora_A:
            yield name, m


class LoraNetwork(PlannedNetwork):
    algo = "lora"
    up_param_names = ("lora_up",)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.layers: dict[tuple[str, str], torch.nn.Module] = {}

    def _config(self, targets: list[Target]):
        from peft import LoraConfig

        r, alpha = self.cfg.rank, self.alpha
        return LoraConfig(
            r=r,
            lora_alpha=alpha,
            target_modules=[t.path for t in targets],
            rank_pattern={t.path: t.rank for t in targets if t.rank != r},
            alpha_pattern={t.path: t.alpha for t in targets if t.alpha != alpha},
            lora_dropout=self.cfg.dropout,
            use_rslora=self.cfg.rs_lora,
            init_lora_weights="gaussian" if self.cfg.init_lora_weights == "gaussian" else True,
        )

    def inject(self, plan: list[Target]) -> None:
        for part, root in self.roots.items():
            targets = [t for t in plan if t.part == part]
            root.add_adapter(self._config(targets))
            found = dict(_lora_layers(root))
            for t in targets:
                self.layers[t.key] = found[t.path]

    def target_params(self, key) -> dict[str, torch.nn.Parameter]:
        layer = self.layers[key]
        return {"lora_down.weight": layer.lora_A[ADAPTER].weight, "lora_up.weight": layer.lora_B[ADAPTER].weight}

    def _adapter(self, key) -> AdapterModule:
        """The module's live tensors (on the training device) as an `AdapterModule`."""
        layer = self.layers[key]
        down = layer.lora_A[ADAPTER].weight
        # the alpha consumers divide by the rank: alpha, or alpha·√rank for rsLoRA (peft's scaling × rank)
        alpha = layer.lora_alpha[ADAPTER] * (math.sqrt(down.shape[0]) if layer.use_rslora.get(ADAPTER) else 1.0)
        tensors = {"lora_down.weight": down, "lora_up.weight": layer.lora_B[ADAPTER].weight}
        return AdapterModule("", tensors, float(alpha), part=key[0], path=key[1])

    def export_module(self, key) -> AdapterModule:
        module = self._adapter(key)
        module.tensors = {k: v.detach().float().cpu().clone() for k, v in module.tensors.items()}
        return module

    @torch.no_grad()
    def apply_max_norm(self, max_norm: float) -> tuple[int, float, float]:
        """kohya's `scale_weight_norms`: scale each module whose ‖ΔW‖ exceeds `max_norm` back to it (both factors
        by √ratio). Returns (modules scaled, mean norm, max norm) before scaling."""
        norms, scaled = [], 0
        for key, layer in self.layers.items():
            a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
            norm = module_delta(self._adapter(key), self.targets[key].module.weight.shape).norm().item()
            norms.append(norm)
            if norm > max_norm:
                ratio = (max_norm / norm) ** 0.5
                a.mul_(ratio)
                b.mul_(ratio)
                scaled += 1
        return scaled, sum(norms) / max(1, len(norms)), max(norms, default=0.0)

    def network_module(self) -> str:
        return "networks.lora"
