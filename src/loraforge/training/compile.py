"""`training.torch_compile`: regional compilation of the UNet (issue 13).

Each of the UNet's transformer blocks (diffusers' `_repeated_blocks`: `BasicTransformerBlock`) is compiled in place
with `torch.compile`, not the whole UNet: the blocks of one resolution level share their compiled code, so compile
time stays short, and the convolutions, the adapters' own modules and the loop stay eager. Compilation happens on
the first steps (slower), for each new bucket shape again.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def compile_unet(unet) -> int:
    """Compile each transformer block of `unet` in place; returns how many were compiled."""
    names = set(getattr(unet, "_repeated_blocks", None) or ())
    blocks = [m for m in unet.modules() if type(m).__name__ in names]
    for block in blocks:
        block.compile()
    log.info("torch.compile: %d transformer blocks of the UNet (%s), compiled on their first steps", len(blocks),
             ", ".join(sorted(names)) or "none found")
    return len(blocks)
