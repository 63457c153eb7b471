"""Adapter modules and their math, shared by training (`networks`), export (`formats` writers), the LoRA-file reader
and the tools: `AdapterModule` is one adapted module (tensors by kohya / LyCORIS suffix, alpha, scale, the module it
patches) and `module_delta` its ΔW (DoRA included). A leaf: imports only torch, `loraforge.errors` and
`loraforge.utils`. The consumer models in `formats.consumers` keep their own parser and math as independent
oracles."""

from .math import axis_norm, dora_weight, magnitude_axis, module_delta, raw_delta, tucker
from .module import (
    ADAPTER_LABELS,
    COMPUTED_KINDS,
    AdapterModule,
    adapter_kind,
    delta_shape,
    missing_tensors,
    module_rank,
)

__all__ = [
    "ADAPTER_LABELS",
    "COMPUTED_KINDS",
    "AdapterModule",
    "adapter_kind",
    "axis_norm",
    "delta_shape",
    "dora_weight",
    "magnitude_axis",
    "missing_tensors",
    "module_delta",
    "module_rank",
    "raw_delta",
    "tucker",
]
