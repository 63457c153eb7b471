"""The precision names of the configs and the CLI ("fp32", "fp16", "bf16") and their torch dtypes."""

from __future__ import annotations

PRECISIONS = ("fp32", "fp16", "bf16")


def torch_dtype(name: str):
    """The torch dtype of a precision name; accelerate's "no" (no mixed precision) is fp32."""
    import torch  # heavy, kept lazy (CLI start-up)

    return {"fp32": torch.float32, "no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]
