"""Shared helpers for the network tests: tiny models (loaded once per test module, deep-copied per network), full-size
models on the meta device, networks from `--set`-style overrides, and random adapter weights (trained-looking
updates instead of LyCORIS' zero-initialised up factors)."""

from __future__ import annotations

import contextlib
import copy

import torch

from loraforge.config import load_config
from loraforge.networks import create_network


def network_config(family: str = "sd15", **overrides):
    items = {"model.family": family, "network.rank": 4}
    items.update(overrides)
    return load_config(None, [f"{k}={_toml(v)}" for k, v in items.items()]).network


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return str(v)


def tiny_model(family: str):
    from loraforge.config.model import ModelConfig
    from loraforge.models.loading import load_model

    return load_model(ModelConfig(family=family))


def build(model, family: str = "sd15", *, copy_model: bool = True, **overrides):
    """(model copy, applied network) for `--set`-style `network.*` overrides."""
    model = copy.deepcopy(model) if copy_model else model
    net = create_network(network_config(family, **overrides))
    net.apply(model)
    return model, net


def randomize(net, seed: int = 0, std: float = 0.3) -> None:
    """Random adapter weights: every factor N(0, std²) (conv cores a bit smaller), DoRA magnitudes the initial norms
    ×(1 + U(0, 0.2)), scalars 0.7, norm offsets N(0, 0.05²)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for part in net.parts:
            for key in [k for k in net.targets if k[0] == part]:
                for name, p in net.target_params(key).items():
                    if name == "dora_scale":
                        p.mul_(1 + 0.2 * torch.rand(p.shape, generator=g))
                    elif name == "scalar":
                        p.fill_(0.7)
                    elif name in ("w_norm", "b_norm"):
                        p.copy_(torch.randn(p.shape, generator=g) * 0.05)
                    else:
                        p.copy_(torch.randn(p.shape, generator=g) * std)


class MetaModel:
    """Just enough of an SDModel for `network.apply`: full-size modules on the meta device."""

    def __init__(self, family: str):
        from accelerate import init_empty_weights
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        from loraforge.families import FAMILIES, full_size_config

        self.family = FAMILIES[family]
        with init_empty_weights():
            self.unet = UNet2DConditionModel.from_config(full_size_config(family, "unet"))
            self.text_encoders = [CLIPTextModel(CLIPTextConfig.from_dict(full_size_config(family, "text_encoder")))]
            if family == "sdxl":
                cfg2 = CLIPTextConfig.from_dict(full_size_config(family, "text_encoder_2"))
                self.text_encoders.append(CLIPTextModelWithProjection(cfg2))


def materialise(net, seed: int = 0) -> None:
    """Put the adapter tensors of a network applied to a meta model on the CPU with small random values (the base
    model stays on meta)."""
    g = torch.Generator().manual_seed(seed)
    modules = getattr(net, "adapters", None) or {}
    for module in modules.values():
        module.to_empty(device="cpu")
        with torch.no_grad():
            for name, buf in module.named_buffers():
                if name == "scalar":
                    buf.fill_(1.0)
                if name == "alpha":
                    buf.fill_(1.0)
    for layer in getattr(net, "layers", {}).values():
        for sub in (layer.lora_A["default"], layer.lora_B["default"]):
            sub.to_empty(device="cpu")
    with torch.no_grad():
        for key in net.targets:
            for name, p in net.target_params(key).items():
                p.copy_(torch.randn(p.shape, generator=g).abs() + 0.5 if name == "dora_scale" else torch.randn(p.shape, generator=g) * 0.01)


@contextlib.contextmanager
def one_thread():
    """Many tiny ops: one intra-op thread is several times faster than two (and far faster on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def file_tensors(mt) -> dict[str, torch.Tensor]:
    """A module's tensors as its kohya file holds them (suffix -> tensor, 0-dim alpha)."""
    t = dict(mt.tensors)
    if mt.alpha is not None:
        t["alpha"] = torch.tensor(float(mt.alpha))
    return t
