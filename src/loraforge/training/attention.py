"""`training.attention`: the UNet's attention backend (kohya's `--sdpa` / `--xformers`, diffusers'
`--enable_xformers_memory_efficient_attention`). The text encoders keep transformers' default."""

from __future__ import annotations

import importlib.util

from ..errors import TrainingError


def check_attention(backend: str) -> None:
    """`xformers` only where the package is installed (pre-flight, before the model loads)."""
    if backend == "xformers" and importlib.util.find_spec("xformers") is None:
        raise TrainingError(
            "training.attention = 'xformers' needs the xformers package, which is not installed: install the build "
            "that matches your torch and CUDA (https://github.com/facebookresearch/xformers), or set "
            "training.attention = 'sdpa' (PyTorch's memory-efficient attention, the default)"
        )


def set_attention(unet, backend: str) -> None:
    """`sdpa`: diffusers' default processors (PyTorch's scaled_dot_product_attention), left as loaded; `eager`:
    plain softmax(QKᵀ)V in PyTorch ops (kohya's behaviour without --sdpa / --xformers); `xformers`: its
    memory-efficient kernel (CUDA only)."""
    if backend == "eager":
        from diffusers.models.attention_processor import AttnProcessor

        unet.set_attn_processor(AttnProcessor())
    elif backend == "xformers":
        check_attention(backend)
        try:
            unet.enable_xformers_memory_efficient_attention()
        except (ValueError, ModuleNotFoundError, RuntimeError) as e:  # no CUDA device, or a build that cannot run
            raise TrainingError(
                f"training.attention = 'xformers' cannot be used here ({e}); set training.attention = 'sdpa'"
            ) from None
