"""`lora`: LoRA on linear and 1×1 layers, through peft (the engine diffusers itself loads LoRA with).

peft injects `LoraLayer`s into the diffusers UNet and the transformers CLIP models, which keeps the diffusers
save/load path exact (`pipe.load_lora_weights` reproduces the trained model bit for bit); the kohya file is derived
from the same tensors by `loraforge.formats.kohya`. Presets and block-wise ranks become an explicit list of module
paths with peft's `rank_pattern` / `alpha_pattern`.
"""

from __future__ import annotations

import math

import torch

from .base import ModuleTensors, PlannedNetwork
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

    def module_tensors(self) -> dict[tuple[str, str], ModuleTensors]:
        out = {}
        for key, layer in self.layers.items():
            down = layer.lora_A[ADAPTER].weight
            # the alpha consumers divide by the rank: alpha, or alpha·√rank for rsLoRA (peft's scaling × rank)
            alpha = layer.lora_alpha[ADAPTER] * (math.sqrt(down.shape[0]) if layer.use_rslora.get(ADAPTER) else 1.0)
            out[key] = ModuleTensors(
                {
                    "lora_down.weight": down.detach().float().cpu().clone(),
                    "lora_up.weight": layer.lora_B[ADAPTER].weight.detach().float().cpu().clone(),
                },
                float(alpha),
            )
        return out

    def delta_weight(self, part: str, module_path: str) -> torch.Tensor:
        return self.layers[(part, module_path)].get_delta_weight(ADAPTER).detach().float().cpu()

    @torch.no_grad()
    def apply_max_norm(self, max_norm: float) -> tuple[int, float, float]:
        """kohya's `scale_weight_norms`: scale each module whose ‖ΔW‖ exceeds `max_norm` back to it (both factors
        by √ratio). Returns (modules scaled, mean norm, max norm) before scaling."""
        norms, scaled = [], 0
        for layer in self.layers.values():
            a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
            delta = b.flatten(1).float() @ a.flatten(1).float() * layer.scaling[ADAPTER]
            norm = delta.norm().item()
            norms.append(norm)
            if norm > max_norm:
                ratio = (max_norm / norm) ** 0.5
                a.mul_(ratio)
                b.mul_(ratio)
                scaled += 1
        return scaled, sum(norms) / max(1, len(norms)), max(norms, default=0.0)

    def network_module(self) -> str:
        return "networks.lora"
