"""Module presets: which layers of the UNet and the text encoders get an adapter.

The sets are LyCORIS' presets (formats.md §6, seed-practices.md §7), written against the diffusers / transformers
classes instead of being handed to LyCORIS: its `full` preset lists `TimestepEmbedding` both as a class and by name
and asserts on a diffusers UNet ("duplicated lora name"). A preset names container classes (every Linear / Conv2d,
and with `train_norm` every GroupNorm / LayerNorm, inside them is a candidate) plus single modules by path.

| preset | UNet | text encoders | k×k convs |
|---|---|---|---|
| `full` | Transformer2DModel, ResnetBlock2D, Downsample2D, Upsample2D, conv_in, conv_out, time_embedding, add_embedding | CLIPAttention, CLIPMLP | yes |
| `full-lin` | Transformer2DModel, ResnetBlock2D, time_embedding, add_embedding | CLIPAttention, CLIPMLP | no |
| `attn-mlp` | Transformer2DModel | CLIPAttention, CLIPMLP | no |
| `attn-only` | Attention (attn1/attn2 q/k/v/out) | CLIPAttention | no |
| `unet-transformer-only` | Transformer2DModel | - | no |
| `unet-convblock-only` | ResnetBlock2D, Downsample2D, Upsample2D, conv_in, conv_out | - | yes |

Module counts on the full-size models (tested in tests/networks/test_presets.py), UNet + text encoders:

| preset | SD 1.5 `lora` | SD 1.5 LyCORIS algos | SDXL `lora` | SDXL LyCORIS algos |
|---|---|---|---|---|
| `full` | 230 + 72 | 282 + 72 | 754 + 264 | 794 + 264 |
| `full-lin` | 230 + 72 | 230 + 72 | 754 + 264 | 754 + 264 |
| `attn-mlp` | 192 + 72 | 192 + 72 | 722 + 264 | 722 + 264 |
| `attn-only` | 128 + 48 | 128 + 48 | 560 + 176 | 560 + 176 |
| `unet-transformer-only` | 192 | 192 | 722 | 722 |
| `unet-convblock-only` | 36 | 88 | 28 | 68 |

`attn-mlp` is kohya's LoRA (16 Transformer2D × 12 = 192 on SD 1.5; 70 blocks × 10 + 11 × proj_in/out = 722 on SDXL;
12 × 6 = 72 and 12 × 6 + 32 × 6 = 264 text-encoder layers); `lora` leaves out the k×k convolutions (LoRA-LierLa),
the LyCORIS algos take them at `conv_dim` (LoCon = LoRA-C3Lier: 282 = formats.md §9.4's count for LoCon presets).
The SDXL `text_projection` is never adapted: A1111 1.10.1 cannot load it and LyCORIS' presets leave it out too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TE_ATTENTION = frozenset({"CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2"})
TE_ALL = TE_ATTENTION | {"CLIPMLP"}
EMBEDDINGS = ("time_embedding.linear_1", "time_embedding.linear_2", "add_embedding.linear_1", "add_embedding.linear_2")


@dataclass(frozen=True)
class Preset:
    unet_classes: frozenset[str]
    unet_names: tuple[str, ...]
    te_classes: frozenset[str]
    convs: bool  # k×k convolutions are part of the set


PRESETS: dict[str, Preset] = {
    "full": Preset(
        frozenset({"Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"}),
        ("conv_in", "conv_out", *EMBEDDINGS),
        TE_ALL,
        True,
    ),
    "full-lin": Preset(frozenset({"Transformer2DModel", "ResnetBlock2D"}), EMBEDDINGS, TE_ALL, False),
    "attn-mlp": Preset(frozenset({"Transformer2DModel"}), (), TE_ALL, False),
    "attn-only": Preset(frozenset({"Attention"}), (), TE_ATTENTION, False),
    "unet-transformer-only": Preset(frozenset({"Transformer2DModel"}), (), frozenset(), False),
    "unet-convblock-only": Preset(
        frozenset({"ResnetBlock2D", "Downsample2D", "Upsample2D"}), ("conv_in", "conv_out"), frozenset(), True
    ),
}


def layer_kind(module: torch.nn.Module) -> str | None:
    """linear / conv1x1 / conv (k×k) / norm, or None for a module no adapter applies to."""
    if isinstance(module, torch.nn.Linear):
        return "linear"
    if isinstance(module, torch.nn.Conv2d):
        return "conv1x1" if tuple(module.kernel_size) == (1, 1) else "conv"
    if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and getattr(module, "weight", None) is not None:
        return "norm"
    return None


def by_classes(root: torch.nn.Module, classes, names=()) -> dict[str, torch.nn.Module]:
    """Every adaptable leaf inside a module whose class is in `classes`, plus the modules named in `names`."""
    out: dict[str, torch.nn.Module] = {}
    wanted = set(names)
    for name, module in root.named_modules():
        if type(module).__name__ in classes:
            for sub, leaf in module.named_modules():
                if sub and layer_kind(leaf):
                    out[f"{name}.{sub}" if name else sub] = leaf
        elif name in wanted and layer_kind(module):
            out[name] = module
    return out


def by_suffixes(root: torch.nn.Module, suffixes) -> dict[str, torch.nn.Module]:
    """Modules whose path is one of `suffixes` or ends with `.<suffix>` (peft's `target_modules` rule)."""
    out = {}
    for name, module in root.named_modules():
        if name and any(name == s or name.endswith("." + s) for s in suffixes) and layer_kind(module):
            out[name] = module
    return out
