"""The LyCORIS engine: `locon`, `loha`, `lokr` and `dora` as LyCORIS modules, selected and wrapped by loraforge.

We do not use LyCORIS' network wrapper (`lycoris.kohya` / `create_lycoris`): its `full` preset asserts on a diffusers
UNet (formats.md §6a), it names modules itself, and its merge helpers apply alpha/rank twice for LoHa/LoKr (§6c).
Instead each module of the plan (`targets.py`) gets one LyCORIS module (`LoConModule`, `LohaModule`, `LokrModule`,
`NormModule`) whose training forward is LyCORIS' own; the modules are registered under `loraforge_adapters` inside
the UNet / text encoder they patch, so `.to()`, `.train()/.eval()`, accelerate and DDP see their parameters.

What we take from LyCORIS: the forward (bypass mode, i.e. `W·x + ΔW·x`, for LoCon/LoKr; for LoHa with our
`rebuilt_op`, which keeps no full-size ΔW for backward), the parametrisation and initialisation, the dropouts. What
is ours: module selection, DoRA's training forward (norm detached, no full-size weight kept: `dora.py`) and its
magnitude (created by us so it works on meta-device models too, on the axis we choose), the
exported tensors (`export`) and the reference ΔW (`adapters.module_delta` of the exported tensors, the math the file
reader and the tools use too; cross-checked against LyCORIS' forward and `lycoris.functional` in tests).
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch

from ..adapters import AdapterModule, raw_delta
from .base import PlannedNetwork
from .norm import build_norm, export_norm
from .targets import Target

log = logging.getLogger(__name__)

CONTAINER = "loraforge_adapters"

# LyCORIS 4 picks fused triton kernels or torch.compile per op on CUDA; we pin its eager torch path (the one the
# tests verify, deterministic, no compile warm-up) unless the user chose a backend.
os.environ.setdefault("LYCORIS_KERNEL_BACKEND", "torch")


@contextlib.contextmanager
def quiet_lycoris():
    """LyCORIS logs every full-matrix fallback and dropout note to stdout; we log our own summary instead."""
    from lycoris.logging import logger

    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class Method:
    """One LyCORIS algorithm: how to build its module for a target and its file tensors."""

    algo = ""
    module_path = "lycoris.kohya"
    up_param_names: tuple[str, ...] = ()

    def build(self, target: Target, cfg) -> torch.nn.Module:
        raise NotImplementedError

    def export(self, module) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def norm_factors(self, module) -> list[torch.Tensor]:
        """The tensors ΔW is linear in, each on its own (ΔW is their product): max-norm scales each by ratio^(1/n)."""
        raise NotImplementedError

    def algo_args(self, cfg) -> dict[str, object]:
        return {"algo": self.algo}

    def diffusers_support(self, network) -> str | None:
        return f"diffusers cannot load {self.algo} files"


def common_kwargs(target: Target, cfg, bypass: bool = True) -> dict:
    return dict(
        multiplier=1.0,
        lora_dim=target.rank,
        alpha=target.alpha,
        rank_dropout=cfg.rank_dropout,
        module_dropout=cfg.module_dropout,
        rank_dropout_scale=cfg.rank_dropout_scale,
        use_tucker=cfg.use_tucker,
        use_scalar=cfg.use_scalar,
        rs_lora=cfg.rs_lora,
        bypass_mode=bypass,
    )


def scalar_of(module) -> torch.Tensor:
    return module.scalar.detach().float()


def cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().float().cpu().clone()


def consumer_alpha(module) -> float:
    """The alpha the file must carry so that consumers' alpha / rank equals the module's scale (rsLoRA:
    alpha·√rank; LoKr with both halves full: anything, consumers use scale 1 there)."""
    return float(module.scale) * module.lora_dim


class LycorisNetwork(PlannedNetwork):
    def __init__(self, cfg, method: Method):
        super().__init__(cfg)
        self.method = method
        self.algo = method.algo
        self.up_param_names = method.up_param_names
        self.adapters: dict[tuple[str, str], torch.nn.Module] = {}

    def inject(self, plan: list[Target]) -> None:
        containers = {}
        for part, root in self.roots.items():
            containers[part] = torch.nn.ModuleDict()
            root.add_module(CONTAINER, containers[part])
        with quiet_lycoris():
            for t in plan:
                # built on the CPU (LyCORIS calls .item() on shape tensors, which a meta default device breaks; the
                # adapter tensors are small), then moved next to the weight it patches
                module = build_norm(t, self.cfg) if t.kind == "norm" else self.method.build(t, self.cfg)
                module.to(device=t.module.weight.device)
                containers[t.part][t.path.replace(".", "__")] = module
                module.apply_to()
                self.adapters[t.key] = module

    def target_params(self, key) -> dict[str, torch.nn.Parameter]:
        return dict(self.adapters[key].named_parameters())

    def export_module(self, key) -> AdapterModule:
        module = self.adapters[key]
        if self.targets[key].kind == "norm":
            return AdapterModule("", export_norm(module), None, part=key[0], path=key[1])
        return AdapterModule("", self.method.export(module), consumer_alpha(module), part=key[0], path=key[1])

    @torch.no_grad()
    def apply_max_norm(self, max_norm: float) -> tuple[int, float, float]:
        """kohya's `scale_weight_norms` for the LyCORIS modules: each module whose update ‖ΔW‖ (the reference ΔW
        of its exported tensors, scale and scalar included; DoRA: the LoCon update before the decomposition, as
        LyCORIS measures it) exceeds `max_norm` is scaled back to it, every factor of the product by the same
        ratio^(1/n), as sd-scripts does with √ratio for LoRA. Norm-layer updates are left alone. Returns (modules
        scaled, mean norm, max norm) before scaling."""
        norms, scaled = [], 0
        for key, module in self.adapters.items():
            if self.targets[key].kind == "norm":
                continue
            exported = self.export_module(key)
            norm = (raw_delta(exported) * exported.scale).norm().item()
            norms.append(norm)
            if norm > max_norm:
                factors = self.method.norm_factors(module)
                for factor in factors:
                    factor.mul_((max_norm / norm) ** (1 / len(factors)))
                scaled += 1
        return scaled, sum(norms) / max(1, len(norms)), max(norms, default=0.0)

    def network_module(self) -> str:
        if self.method.module_path == "networks.lora" and not self.cfg.use_tucker and not self.cfg.train_norm:
            return "networks.lora"
        return "lycoris.kohya"

    def algo_args(self) -> dict[str, object]:
        return self.method.algo_args(self.cfg)

    def diffusers_support(self) -> str | None:
        if self.cfg.train_norm:
            return "diffusers cannot load norm-layer updates (w_norm/b_norm, from network.train_norm)"
        return self.method.diffusers_support(self)
