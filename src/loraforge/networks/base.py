"""What every adapter network offers the trainer and the writers.

A network is injected into the UNet and (optionally) the text encoders of an `SDModel`; the trainer asks it for its
trainable parameters per part, and the writers ask it for its tensors per module. Module names are the diffusers /
transformers module paths (`down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`), keyed by part
(`unet`, `te1`, `te2`); turning them into each file layout's names is the job of `loraforge.formats`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

PARTS_SD = ("unet", "te1")
PARTS_SDXL = ("unet", "te1", "te2")


@dataclass
class ModuleTensors:
    """One adapted module as the kohya/LyCORIS layout stores it: suffix → tensor (`lora_down.weight`, ...) plus the
    real alpha (a float; written as a 0-dim tensor)."""

    tensors: dict[str, torch.Tensor]
    alpha: float


class Network(ABC):
    algo: str

    @abstractmethod
    def apply(self, model) -> None:
        """Inject the adapter into `model` (an `SDModel`) in place."""

    @abstractmethod
    def parameters(self, part: str) -> list[torch.nn.Parameter]:
        """Trainable parameters of one part (`unet`, `te1`, `te2`); empty if that part is not adapted."""

    @abstractmethod
    def module_tensors(self) -> dict[tuple[str, str], ModuleTensors]:
        """(part, module path) → tensors in the kohya layout, detached, on the CPU, fp32."""

    @abstractmethod
    def delta_weight(self, part: str, module_path: str) -> torch.Tensor:
        """The update ΔW this module adds to its base weight (scale included): the reference every exported file
        must reproduce."""

    def apply_max_norm(self, max_norm: float) -> tuple[int, float, float]:
        """Max-norm regularisation (`optimizer.scale_weight_norms`): (modules scaled, mean norm, max norm)."""
        raise NotImplementedError(f"optimizer.scale_weight_norms is not available for network.algo = {self.algo!r}")

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All trainable tensors (for checkpoints)."""
        raise NotImplementedError

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    @property
    def parts(self) -> tuple[str, ...]:
        raise NotImplementedError
