"""Block-wise ranks, alphas and learning rates: which block of the UNet a module belongs to.

The numbering is sd-scripts' (kohya.md §2.1), read off the module's original (LDM / SGM) name, so it is the same
for diffusers' and the original layouts and for the tiny test models (which simply have fewer blocks):

* SD 1.x / 2.x, 25 values: 0-11 = `input_blocks.0-11` (IN0 is conv_in), 12 = the whole `middle_block`,
  13-24 = `output_blocks.0-11`. The time embedding and `out` (conv_out) have no slot: they use `rank` / `alpha`.
* SDXL, 23 values: 0 = `time_embed` and `label_emb`, 1-9 = `input_blocks.0-8`, 10-12 = `middle_block.0-2`
  (resnet, transformer, resnet), 13-21 = `output_blocks.0-8`, 22 = `out` (conv_out).

* FLUX, 57 values: 0-18 = the double-stream `transformer_blocks.0-18`, 19-56 = the single-stream
  `single_transformer_blocks.0-37` (read off the diffusers path; kohya's `double_blocks_N` / `single_blocks_N`).
  The embedders and `norm_out` / `proj_out` have no slot.

Text-encoder modules are never block-wise.
"""

from __future__ import annotations

import re

from ..families import family as family_info
from ..families.registry import FLUX_DOUBLE_BLOCKS
from ..families.ldm import unet_module_to_original

_INPUT = re.compile(r"^input_blocks\.(\d+)\.")
_MIDDLE = re.compile(r"^middle_block\.(\d+)\.")
_OUTPUT = re.compile(r"^output_blocks\.(\d+)\.")
_DOUBLE = re.compile(r"^transformer_blocks\.(\d+)\.")
_SINGLE = re.compile(r"^single_transformer_blocks\.(\d+)\.")


def flux_block_index(path: str) -> int | None:
    """Block number of a FLUX transformer module (diffusers path): double block N → N, single block N → 19 + N."""
    if m := _DOUBLE.match(path + "."):
        return int(m[1])
    if m := _SINGLE.match(path + "."):
        return FLUX_DOUBLE_BLOCKS + int(m[1])
    return None


def block_index(family: str, original_path: str) -> int | None:
    """Block number of a UNet module given its original (LDM/SGM) path, or None when it has no block slot."""
    path = original_path + "."
    sdxl = family_info(family).block_layout == "sgm"
    if m := _INPUT.match(path):
        return int(m[1]) + (1 if sdxl else 0)
    if m := _MIDDLE.match(path):
        return 10 + int(m[1]) if sdxl else 12
    if m := _OUTPUT.match(path):
        return 13 + int(m[1])
    if sdxl and path.startswith(("time_embed.", "label_emb.")):
        return 0
    if sdxl and path.startswith("out."):
        return 22
    return None


def block_label(family: str, index: int) -> str:
    """Human name of a block number: IN04, MID, OUT11 (SD 1.x); EMB, IN03, MID1, OUT08, OUT (SDXL); D00-D18,
    S00-S37 (FLUX's double and single blocks)."""
    if family_info(family).block_layout == "flux":
        return f"D{index:02d}" if index < FLUX_DOUBLE_BLOCKS else f"S{index - FLUX_DOUBLE_BLOCKS:02d}"
    if family_info(family).block_layout == "sgm":
        if index == 0:
            return "EMB"
        if index <= 9:
            return f"IN{index - 1:02d}"
        if index <= 12:
            return f"MID{index - 10}"
        if index <= 21:
            return f"OUT{index - 13:02d}"
        return "OUT"
    if index < 12:
        return f"IN{index:02d}"
    if index == 12:
        return "MID"
    return f"OUT{index - 13:02d}"


def unet_block_indices(unet_config, family: str, paths) -> dict[str, int | None]:
    """diffusers UNet (or FLUX transformer) module path -> block number (None: no block slot)."""
    if family_info(family).block_layout == "flux":
        return {path: flux_block_index(path) for path in paths}
    out = {}
    for path in paths:
        try:
            original = unet_module_to_original(path, unet_config)
        except KeyError:
            out[path] = None
            continue
        out[path] = block_index(family, original)
    return out
