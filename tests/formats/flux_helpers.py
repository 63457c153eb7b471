"""Random FLUX LoRAs on every targetable module of the full-size architecture (tiny ranks), for the format tests."""

import functools

import torch

from loraforge.adapters import AdapterModule
from loraforge.families.architectures import COMPONENTS
from loraforge.formats.flux_lora import text_encoder_linears


@functools.lru_cache(maxsize=1)
def transformer_shapes() -> dict[str, tuple[int, ...]]:
    """Linear module -> weight shape of the full-size FLUX.1 [dev] transformer, built on the meta device."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    with init_empty_weights():
        model = FluxTransformer2DModel.from_config(COMPONENTS["flux"]["transformer"])
    return {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def random_flux_lora(seed: int = 0, text_encoders: bool = True) -> list[AdapterModule]:
    """A LoRA on every Linear of the transformer (part "unet"), CLIP-L ("te1") and T5 ("te2"), ranks 1-2 and
    alphas that differ between the parts of one fused layer."""
    g = torch.Generator().manual_seed(seed)
    shapes = {("unet", p): s for p, s in transformer_shapes().items()}
    if text_encoders:
        for part in ("te1", "te2"):
            shapes.update({(part, p): s for p, s in text_encoder_linears(part).items()})
    modules = []
    for i, ((part, path), (out, inp)) in enumerate(sorted(shapes.items())):
        rank = 1 + i % 2
        tensors = {"lora_down.weight": torch.randn(rank, inp, generator=g) * 0.1,
                   "lora_up.weight": torch.randn(out, rank, generator=g) * 0.1}
        modules.append(AdapterModule("", tensors, float(1 + i % 3), part=part, path=path))
    return modules


def delta(m: AdapterModule) -> torch.Tensor:
    from loraforge.adapters.math import raw_delta

    return raw_delta(m) * m.scale
