"""What every adapter network offers the trainer and the writers.

A network is injected into the UNet and (optionally) the text encoders of an `SDModel`; the trainer asks it for its
trainable parameters per part (and their learning-rate groups), and the writers ask it for its tensors per module.
Module names are the diffusers / transformers module paths (`down_blocks.1.attentions.0.transformer_blocks.0.attn1.
to_q`), keyed by part (`unet`, `te1`, `te2`); turning them into each file layout's names is the job of
`loraforge.formats`.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from ..adapters import AdapterModule, module_delta
from ..config.network import NetworkConfig
from ..errors import NetworkError
from .targets import Target, describe_plan, part_modules, plan_targets

log = logging.getLogger(__name__)

PARTS_SD = ("unet", "te1")
PARTS_SDXL = ("unet", "te1", "te2")


@dataclass
class ParamGroup:
    """Parameters that share a learning rate: `lr_scale` multiplies the part's learning rate."""

    name: str
    params: list[torch.nn.Parameter]
    lr_scale: float = 1.0


class Network(ABC):
    algo: str

    @abstractmethod
    def apply(self, model) -> None:
        """Inject the adapter into `model` (an `SDModel`) in place."""

    @abstractmethod
    def parameters(self, part: str) -> list[torch.nn.Parameter]:
        """Trainable parameters of one part (`unet`, `te1`, `te2`); empty if that part is not adapted."""

    @abstractmethod
    def module_tensors(self) -> dict[tuple[str, str], AdapterModule]:
        """(part, module path) → the module in the kohya layout (`AdapterModule` with part and path set; tensors
        detached, on the CPU, fp32; alpha as consumers must read it: alpha·√rank for rsLoRA, None for norm diffs)."""

    @abstractmethod
    def delta_weight(self, part: str, module_path: str) -> torch.Tensor:
        """The update ΔW this module adds to its base weight (scale included, eval mode), on the CPU: the reference
        every exported file must reproduce."""

    def param_groups(self, part: str) -> list[ParamGroup]:
        """Learning-rate groups of one part; by default a single group."""
        params = self.parameters(part)
        return [ParamGroup("", params)] if params else []

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

    def network_module(self) -> str:
        """`ss_network_module`: what sd-scripts would load the file with."""
        return "networks.lora"

    def network_args(self) -> dict[str, str]:
        """`ss_network_args`: the sd-scripts / LyCORIS `--network_args` that describe the file."""
        return {}

    def diffusers_support(self) -> str | None:
        """None when diffusers loads this network exactly, else why it cannot (for the output log)."""
        return None


class PlannedNetwork(Network):
    """A network built from a `plan_targets` plan: presets, block-wise ranks/alphas and learning-rate weights, LoRA+
    groups and the metadata are shared by every engine."""

    up_param_names: tuple[str, ...] = ()  # parameter names that LoRA+ speeds up

    def __init__(self, cfg: NetworkConfig):
        self.cfg = cfg
        self.alpha = float(cfg.alpha) if cfg.alpha is not None else float(cfg.rank)
        self.targets: dict[tuple[str, str], Target] = {}
        self.roots: dict[str, torch.nn.Module] = {}
        self.family = "sd15"

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.roots)

    def apply(self, model) -> None:
        model.unet.requires_grad_(False)
        for te in model.text_encoders:
            te.requires_grad_(False)
        self.family = model.family.name
        plan = plan_targets(model, self.cfg)
        self.roots = {p: m for p, m in part_modules(model, self.cfg).items() if any(t.part == p for t in plan)}
        self.targets = {t.key: t for t in plan}
        self.inject(plan)
        log.info("network: %s on %s", self.algo, describe_plan(plan, self.family))

    @abstractmethod
    def inject(self, plan: list[Target]) -> None:
        """Create the adapter modules of the plan in the model."""

    @abstractmethod
    def target_params(self, key: tuple[str, str]) -> dict[str, torch.nn.Parameter]:
        """Trainable parameters of one adapted module, by name (`lora_down.weight`, `hada_w1_a`, ...)."""

    @abstractmethod
    def export_module(self, key: tuple[str, str]) -> AdapterModule:
        """One adapted module as `module_tensors` returns it."""

    def module_tensors(self) -> dict[tuple[str, str], AdapterModule]:
        return {key: self.export_module(key) for key in self.targets}

    def delta_weight(self, part: str, module_path: str) -> torch.Tensor:
        """ΔW of the exported tensors (`adapters.module_delta`, the math the file reader and the tools use too); the
        tests check it against the engine's own forward (peft, LyCORIS) and the consumer models."""
        key = (part, module_path)
        weight = self.targets[key].module.weight.detach().float().cpu()
        with torch.no_grad():
            return module_delta(self.export_module(key), weight.shape, weight)

    def parameters(self, part: str) -> list[torch.nn.Parameter]:
        return [p for key in self.targets if key[0] == part for p in self.target_params(key).values()]

    def param_groups(self, part: str) -> list[ParamGroup]:
        """One group per learning-rate weight (block-wise lr), each split into `plus` (the up matrices, at lr × the
        LoRA+ ratio) and the rest."""
        ratio = self.cfg.loraplus_lr_ratio
        groups: dict[tuple[float, bool], list] = {}
        for key, target in self.targets.items():
            if key[0] != part:
                continue
            for name, p in self.target_params(key).items():
                plus = ratio is not None and name.startswith(self.up_param_names)
                groups.setdefault((target.lr_weight, plus), []).append(p)
        out = []
        weights = sorted({w for w, _ in groups})
        for (weight, plus), params in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            name = ("" if len(weights) == 1 else f"lr{weight:g}") + ("_plus" if plus else "")
            out.append(ParamGroup(name.strip("_"), params, weight * (ratio if plus else 1.0)))
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            f"{part}.{path}.{name}": p.detach().cpu().clone()
            for (part, path) in self.targets
            for name, p in self.target_params((part, path)).items()
        }

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        expected = set()
        with torch.no_grad():
            for key in self.targets:
                for name, p in self.target_params(key).items():
                    full = f"{key[0]}.{key[1]}.{name}"
                    expected.add(full)
                    if full not in sd:
                        raise NetworkError(
                            f"the checkpoint lacks the network tensor {full}: it was saved with other [network] "
                            "settings; resume with the settings of the run that wrote it"
                        )
                    p.copy_(sd[full].to(p.device, p.dtype))
        extra = sorted(set(sd) - expected)
        if extra:
            raise NetworkError(
                f"the checkpoint has network tensors this network does not ({', '.join(extra[:5])}): it was saved "
                "with other [network] settings; resume with the settings of the run that wrote it"
            )

    def network_args(self) -> dict[str, str]:
        c = self.cfg
        args: dict[str, object] = {}
        if c.preset is not None:
            args["preset"] = c.preset
        if c.algo != "lora":
            has_convs = any(t.kind == "conv" for t in self.targets.values())
            if has_convs:
                args["conv_dim"] = c.conv_dim if c.conv_dim is not None else c.rank
                args["conv_alpha"] = c.conv_alpha if c.conv_alpha is not None else (c.alpha or args["conv_dim"])
        for name in ("rank_dropout", "module_dropout"):  # `dropout` is sd-scripts' --network_dropout (ss_network_dropout)
            if getattr(c, name):
                args[name] = getattr(c, name)
        for name in ("use_tucker", "use_scalar", "rank_dropout_scale", "train_norm"):
            if getattr(c, name):
                args[name] = True
        if c.rs_lora:
            args["rs_lora"] = True
        for name in ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas"):
            if getattr(c, name) is not None:
                args[name] = ",".join(f"{v:g}" for v in getattr(c, name))
        if c.block_lr_weights is not None:
            args["block_lr_weights"] = ",".join(f"{v:g}" for v in c.block_lr_weights)
        if c.loraplus_lr_ratio is not None:
            args["loraplus_lr_ratio"] = c.loraplus_lr_ratio
        args.update(self.algo_args())
        return {k: _arg_text(v) for k, v in args.items()}

    def algo_args(self) -> dict[str, object]:
        return {}


def _arg_text(value) -> str:
    """network_args values as sd-scripts stores them: strings ("True", "8", "0.5")."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def network_args_json(network: Network) -> str:
    return json.dumps(network.network_args())
