"""LoRA on linear layers, through peft (the engine diffusers itself loads LoRA with).

peft injects `LoraLayer`s into the diffusers UNet and the transformers CLIP models, which keeps the diffusers
save/load path exact (`pipe.load_lora_weights` reproduces the trained model bit for bit); the kohya file is
derived from the same tensors by `loraforge.formats.kohya`.
"""

from __future__ import annotations

import torch

from ..config.network import NetworkConfig
from .base import Network, ModuleTensors

ADAPTER = "default"


def _lora_layers(module: torch.nn.Module):
    from peft.tuners.lora import LoraLayer

    for name, m in module.named_modules():
        if isinstance(m, LoraLayer) and ADAPTER in m.lora_A:
            yield name, m


class LoraNetwork(Network):
    algo = "lora"

    def __init__(self, cfg: NetworkConfig):
        self.cfg = cfg
        self.alpha = float(cfg.alpha) if cfg.alpha is not None else float(cfg.rank)
        self.modules: dict[str, torch.nn.Module] = {}  # part -> module the adapter lives in
        self._parts: tuple[str, ...] = ()

    def _config(self, targets: list[str]):
        from peft import LoraConfig

        return LoraConfig(
            r=self.cfg.rank,
            lora_alpha=self.alpha,
            target_modules=targets,
            lora_dropout=self.cfg.dropout,
            init_lora_weights="gaussian" if self.cfg.init_lora_weights == "gaussian" else True,
        )

    def apply(self, model) -> None:
        model.unet.requires_grad_(False)
        for te in model.text_encoders:
            te.requires_grad_(False)
        model.unet.add_adapter(self._config(self.cfg.target_modules))
        if not list(_lora_layers(model.unet)):
            raise ValueError(
                f"network.target_modules = {self.cfg.target_modules} matched no UNet module; use names such as "
                "to_q, to_k, to_v, to_out.0, proj_in, ff.net.2"
            )
        self.modules = {"unet": model.unet}
        if self.cfg.train_text_encoder:
            for i, te in enumerate(model.text_encoders):
                te.add_adapter(self._config(self.cfg.text_encoder_target_modules))
                self.modules[f"te{i + 1}"] = te
        self._parts = tuple(self.modules)

    @property
    def parts(self) -> tuple[str, ...]:
        return self._parts

    def parameters(self, part: str) -> list[torch.nn.Parameter]:
        module = self.modules.get(part)
        if module is None:
            return []
        return [p for n, p in module.named_parameters() if "lora_" in n and p.requires_grad]

    def peft_state_dict(self, part: str) -> dict[str, torch.Tensor]:
        from peft.utils import get_peft_model_state_dict

        return get_peft_model_state_dict(self.modules[part], adapter_name=ADAPTER)

    def peft_config(self, part: str) -> dict:
        return self.modules[part].peft_config[ADAPTER].to_dict()

    def module_tensors(self) -> dict[tuple[str, str], ModuleTensors]:
        out = {}
        for part, module in self.modules.items():
            for name, layer in _lora_layers(module):
                out[(part, name)] = ModuleTensors(
                    {
                        "lora_down.weight": layer.lora_A[ADAPTER].weight.detach().float().cpu().clone(),
                        "lora_up.weight": layer.lora_B[ADAPTER].weight.detach().float().cpu().clone(),
                    },
                    float(layer.lora_alpha[ADAPTER]),
                )
        return out

    def delta_weight(self, part: str, module_path: str) -> torch.Tensor:
        layer = dict(_lora_layers(self.modules[part]))[module_path]
        return layer.get_delta_weight(ADAPTER).detach().float().cpu()

    @torch.no_grad()
    def apply_max_norm(self, max_norm: float) -> tuple[int, float, float]:
        """kohya's `scale_weight_norms`: scale each module whose ‖ΔW‖ exceeds `max_norm` back to it (both factors
        by √ratio). Returns (modules scaled, mean norm, max norm) before scaling."""
        norms, scaled = [], 0
        for module in self.modules.values():
            for _, layer in _lora_layers(module):
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

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            f"{part}.{k}": v.detach().cpu().clone()
            for part in self.modules
            for k, v in self.peft_state_dict(part).items()
        }

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        from peft.utils import set_peft_model_state_dict

        for part, module in self.modules.items():
            sub = {k[len(part) + 1 :]: v for k, v in sd.items() if k.startswith(part + ".")}
            result = set_peft_model_state_dict(module, sub, adapter_name=ADAPTER)
            unexpected = getattr(result, "unexpected_keys", [])
            if unexpected:
                raise ValueError(f"checkpoint has LoRA tensors this network does not: {unexpected[:5]}")


def create_network(cfg: NetworkConfig) -> Network:
    if cfg.algo == "lora":
        return LoraNetwork(cfg)
    raise ValueError(f"unknown network.algo {cfg.algo!r}")
