"""Adapters: LoRA and its relatives, each injected into the UNet and text encoders of an `SDModel`.

Layout (like peft's tuners): `base` (the `Network` interface, the shared plan-based network), `presets` (module
sets), `blocks` (block-wise numbering), `targets` (the plan: modules, ranks, alphas, lr weights), one module per
method (`lora` on peft; `locon`, `loha`, `lokr`, `dora`, `norm` on LyCORIS modules through `lycoris_engine`).
See docs/networks.md.
"""

from ..config.network import NetworkConfig
from .base import Network, ParamGroup, network_args_json
from .dora import DoraMethod, warn_output_axis
from .locon import LoconMethod
from .loha import LohaMethod
from .lokr import LokrMethod
from .lora import LoraNetwork
from .lycoris_engine import LycorisNetwork
from .none import NoAdapter

__all__ = ["Network", "ParamGroup", "create_network", "network_args_json"]

# `network.algo` → the LyCORIS method it trains (plain LoRA trains on peft instead)
LYCORIS_METHODS = {"locon": LoconMethod, "loha": LohaMethod, "lokr": LokrMethod, "dora": DoraMethod}


def create_network(cfg: NetworkConfig) -> Network:
    """The network `cfg.algo` names (not yet applied: call `network.apply(model)`)."""
    if cfg.algo == "lora":
        return LoraNetwork(cfg)
    if cfg.algo == "none":
        return NoAdapter(cfg)
    if cfg.algo not in LYCORIS_METHODS:
        raise ValueError(f"unknown network.algo {cfg.algo!r}; expected lora, {', '.join(LYCORIS_METHODS)}")
    if cfg.algo == "dora":
        warn_output_axis(cfg)
    return LycorisNetwork(cfg, LYCORIS_METHODS[cfg.algo]())
