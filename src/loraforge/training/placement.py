"""Where the frozen parts of the model go, and in which dtype: the text encoders and the VAE first (the caches use
them), the denoiser after the caches are filled (`Trainer.prepare`), so FLUX's T5 and transformer are never on the
device together."""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch

from .quantize import quantize_unet

log = logging.getLogger(__name__)


def place_encoders(model, device, weight_dtype: torch.dtype, no_half_vae: bool) -> torch.dtype:
    """The text encoders and the VAE onto `device`, frozen; returns the VAE's dtype (fp32 under fp16 or
    `no_half_vae`: fp16 SD VAEs overflow into NaNs)."""
    model.vae.requires_grad_(False)
    for te in model.text_encoders:
        te.to(device, dtype=weight_dtype)
    vae_dtype = torch.float32 if weight_dtype == torch.float16 or no_half_vae else weight_dtype
    model.vae.to(device, dtype=vae_dtype)
    return vae_dtype


def place_denoiser(unet, device, weight_dtype: torch.dtype, quantize_base: str, channels_last: bool,
                   off_device: tuple[str, ...] = ()) -> None:
    """The denoiser's frozen weights in the compute dtype on `device`. A quantized base is quantized layer by layer as
    its layers move there (before the LoRA wraps them), so the whole denoiser never sits there in the compute dtype
    (FLUX's: 22 GiB in bf16). The block lists named in `off_device` (`training.blocks_to_swap`) stay in CPU memory,
    quantized one block at a time on `device`; `BlockSwap` takes them over once the adapter is on them."""
    unet.to(dtype=weight_dtype)
    quantized = 0
    for block in (b for name in off_device for b in getattr(unet, name)):
        quantized += quantize_unet(block, quantize_base, device)
        block.to("cpu")
    with _without(unet, off_device):
        quantized += quantize_unet(unet, quantize_base, device)
        unet.to(device)
        if channels_last:
            unet.to(memory_format=torch.channels_last)
    if quantized:
        log.info("model.quantize_base = %s: %d linear layers of the denoiser quantized (torchao, weight-only)",
                 quantize_base, quantized)


@contextmanager
def _without(module: torch.nn.Module, children: tuple[str, ...]):
    """`module` with the named children taken off for the duration (so `.to` and quantization pass them by)."""
    order = list(module._modules)
    kept = {name: module._modules.pop(name) for name in children}
    try:
        yield module
    finally:
        current = {**module._modules, **kept}
        module._modules.clear()
        module._modules.update((name, current[name]) for name in order)
