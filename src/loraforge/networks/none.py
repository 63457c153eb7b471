"""`network.algo = "none"`: no adapter (textual inversion alone). The trainer still asks a network for its parts,
parameters and tensors; this one has none, so only the new token embeddings of pivotal tuning train."""

from __future__ import annotations

import torch

from ..adapters import AdapterModule
from ..errors import NetworkError
from .base import Network


class NoAdapter(Network):
    algo = "none"

    def __init__(self, cfg=None):
        self.cfg = cfg

    def apply(self, model) -> None:
        """Nothing to inject: the base model stays as it is."""

    @property
    def parts(self) -> tuple[str, ...]:
        return ()

    def parameters(self, part: str) -> list[torch.nn.Parameter]:
        return []

    def module_tensors(self) -> dict[tuple[str, str], AdapterModule]:
        return {}

    def delta_weight(self, part: str, module_path: str) -> torch.Tensor:
        raise NetworkError(f"network.algo = 'none' adapts no module ({part} {module_path})")

    def apply_max_norm(self, max_norm: float) -> tuple[int, float, float]:
        return 0, 0.0, 0.0  # no module to scale

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        if sd:
            raise NetworkError(f"a checkpoint with {len(sd)} adapter tensors cannot be loaded into network.algo = "
                               "'none': resume it with the network.algo of the run that wrote it")

    def diffusers_support(self) -> str | None:
        return "network.algo = 'none' trains no LoRA"
