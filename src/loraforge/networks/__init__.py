"""Adapters: LoRA and its relatives, each injected into the UNet and text encoders of an `SDModel`.

Layout (like peft's tuners): `base` (the `Network` interface, the shared plan-based network), `presets` (module
sets), `blocks` (block-wise numbering), `targets` (the plan: modules, ranks, alphas, lr weights), one module per
method (`lora` on peft; `locon`, `loha`, `lokr`, `dora`, `norm` on LyCORIS modules through `lycoris_engine`).
See docs/networks.md.
"""

from ..config.network import NetworkConfig
from .base import Network, ParamGroup, network_args_json

__all__ = ["Network", "ParamGroup", "create_network", "network_args_json"]


def create_network(cfg: NetworkConfig) -> Network:
    """The network `cfg.algo` names (not yet applied: call `network.apply(model)`)."""
    if cfg.algo == "lora":
        from .lora import LoraNetwork

        return LoraNetwork(cfg)
    from .lycoris_engine import LycorisNetwork

    if cfg.algo == "locon":
        from .locon import LoconMethod as method
    elif cfg.algo == "loha":
        from .loha import LohaMethod as method
    elif cfg.algo == "lokr":
        from .lokr import LokrMethod as method
    elif cfg.algo == "dora":
        from .dora import DoraMethod as method, warn_output_axis

        warn_output_axis(cfg)
    else:
        raise ValueError(f"unknown network.algo {cfg.algo!r}; expected lora, locon, loha, lokr or dora")
    return LycorisNetwork(cfg, method())
