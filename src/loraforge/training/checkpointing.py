"""`training.gradient_checkpointing`: full (`true`) or selective (`"selective"`) activation checkpointing.

Both checkpoint the same units, the ones diffusers' UNet blocks hand to their `_gradient_checkpointing_func` (each
ResNet block, each transformer block). `true` keeps only each unit's inputs and recomputes the whole unit in backward.
`"selective"` (torch's selective activation checkpointing, `create_selective_checkpoint_contexts`) keeps, in addition,
the outputs of the expensive operations inside a unit (matrix products, convolutions, attention) and recomputes only
the cheap ones between them (norms, activations, additions, dropout with the same random draws): most of the
recomputation's FLOPs are saved, and the memory lies between no checkpointing and full checkpointing.
"""

from __future__ import annotations


import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

_aten = torch.ops.aten
# the operations whose outputs selective checkpointing keeps (the rest is recomputed in backward)
SAVED_OPS = tuple(
    getattr(_aten, name).default
    for name in ("mm", "addmm", "bmm", "baddbmm", "convolution", "_scaled_dot_product_flash_attention",
                 "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention",
                 "_scaled_dot_product_cudnn_attention")
    if hasattr(_aten, name)
)


def _policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _contexts():
    return create_selective_checkpoint_contexts(_policy)


def selective_checkpoint(module, *args):
    """diffusers' `_gradient_checkpointing_func` for one unit, with the selective policy."""
    return checkpoint(module.__call__, *args, use_reentrant=False, context_fn=_contexts)


def enable_checkpointing(unet, text_encoders, mode: bool | str) -> None:
    """Checkpoint the UNet's blocks (and the given text encoders' layers: transformers' own, always full)."""
    if not mode:
        return
    unet.enable_gradient_checkpointing(selective_checkpoint if mode == "selective" else None)
    for te in text_encoders:
        te.gradient_checkpointing_enable()


__all__ = ["SAVED_OPS", "enable_checkpointing", "selective_checkpoint"]
