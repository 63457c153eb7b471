"""`training.torch_compile`: regional compilation of the UNet (issue 13).

Each of the UNet's transformer blocks (diffusers' `_repeated_blocks`: `BasicTransformerBlock`) is compiled in place
with `torch.compile`, not the whole UNet: the blocks of one resolution level share their compiled code, so compile
time stays short, and the convolutions, the adapters' own modules and the loop stay eager. Compilation happens on
the first steps (slower), for each new bucket shape again.

`training.torch_compile_mode` passes torch.compile's mode: `reduce-overhead` records CUDA graphs, which replay one
fixed shape, so it is refused when the run's buckets give several image sizes (`check_static_shapes`).
"""

from __future__ import annotations

import logging

from ..errors import ConfigError

log = logging.getLogger(__name__)


def compile_unet(unet, mode: str = "default") -> int:
    """Compile each transformer block of `unet` in place with torch.compile's `mode`; returns how many."""
    names = set(getattr(unet, "_repeated_blocks", None) or ())
    blocks = [m for m in unet.modules() if type(m).__name__ in names]
    for block in blocks:
        block.compile(mode=mode)
    log.info("torch.compile (mode %s): %d transformer blocks of the UNet (%s), compiled on their first steps", mode,
             len(blocks), ", ".join(sorted(names)) or "none found")
    return len(blocks)


def check_static_shapes(mode: str, sizes: set) -> None:
    """`reduce-overhead` (CUDA graphs) only when every batch has one image size (`sizes`: the buckets' sizes)."""
    if mode == "reduce-overhead" and len(sizes) > 1:
        shown = ", ".join(f"{w}×{h}" for w, h in sorted(sizes)[:6]) + (" …" if len(sizes) > 6 else "")
        raise ConfigError(
            f"training.torch_compile_mode = 'reduce-overhead' records CUDA graphs for one fixed shape, but this "
            f"run's buckets give {len(sizes)} image sizes ({shown}): each would record its own graphs and compile "
            "again. Train at one size (dataset.enable_bucket = false, or images of one aspect ratio), or set "
            "training.torch_compile_mode = 'default'"
        )
