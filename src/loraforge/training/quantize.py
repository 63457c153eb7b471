"""`model.quantize_base`: the frozen UNet's linear layers stored quantized by torchao (int8 or float8 weight-only)
before the LoRA is added.

peft wraps a torchao-quantized `nn.Linear` in its `TorchaoLoraLinear`: the base layer runs on the quantized weight
(dequantized per call), the LoRA factors stay ordinary fp32 parameters, so training, gradients and the saved file are
the same as over an unquantized base. Convolutions, norms and the text encoders are left as they are.

torchao's linear dequantizes the weight and calls `F.linear` on it, so autograd would keep that full-precision copy
of every layer's weight from forward to backward (for the input's gradient): more memory than an unquantized base.
Each quantized layer's forward is therefore `frozen_linear`, which keeps a reference to the quantized weight and
dequantizes it again in backward.
"""

from __future__ import annotations

import logging
import types

import torch
import torch.nn.functional as F

from ..errors import ConfigError

log = logging.getLogger(__name__)

FP8_CAPABILITY = (8, 9)  # float8 matmuls: Ada (sm_89) and Hopper (sm_90) or newer


def check_quantize(mode: str, device) -> None:
    """Refuse a mode the device cannot run (fp8 needs a CUDA GPU of compute capability 8.9 or newer)."""
    if mode != "fp8":
        return
    device = torch.device(device)
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    if capability is None or tuple(capability) < FP8_CAPABILITY:
        where = (f"a CUDA GPU of compute capability {capability[0]}.{capability[1]}" if capability
                 else f"the {device.type} device")
        raise ConfigError(
            f"model.quantize_base = 'fp8' needs a CUDA GPU of compute capability 8.9 or newer (L4, L40S, RTX 40xx, "
            f"H100, H200); this run trains on {where}. Set model.quantize_base = 'int8' (any device) or 'none'"
        )


def quantize_unet(unet: torch.nn.Module, mode: str, device) -> int:
    """Quantize the UNet's `nn.Linear` layers in place (before the network is injected), each moved to `device` as it
    is quantized (torchao's `device`: one layer at a time in full precision there); returns how many."""
    if mode == "none":
        return 0
    check_quantize(mode, device)
    try:
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_  # lazy: optional
    except ImportError:
        raise ConfigError(f"model.quantize_base = {mode!r} needs the torchao package, which is not installed: "
                          "install it (pip install 'loraforge[quant]'), or set model.quantize_base = 'none'") from None
    count = sum(isinstance(m, torch.nn.Linear) for m in unet.modules())
    quantize_(unet, Int8WeightOnlyConfig() if mode == "int8" else Float8WeightOnlyConfig(), device=device)
    for m in unet.modules():
        if isinstance(m, torch.nn.Linear) and hasattr(m.weight, "dequantize"):
            m.forward = types.MethodType(_forward, m)
    return count


class _FrozenLinear(torch.autograd.Function):
    """y = x Wᵀ + b for a frozen quantized W: backward gives x's gradient only, from W dequantized there."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.weight = weight  # the module's quantized parameter: a reference, no copy
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        return grad @ ctx.weight.dequantize().to(grad.dtype), None, None


def frozen_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear` over a frozen torchao weight without keeping its dequantized copy for backward."""
    if not torch.is_grad_enabled() or not x.requires_grad:
        return F.linear(x, weight, bias)
    return _FrozenLinear.apply(x, weight, bias)


def _forward(self, x: torch.Tensor) -> torch.Tensor:
    return frozen_linear(x, self.weight, self.bias)


__all__ = ["check_quantize", "frozen_linear", "quantize_unet"]
