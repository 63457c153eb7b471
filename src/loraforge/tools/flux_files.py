"""`loraforge inspect` and `loraforge convert` of FLUX.1 LoRA files: kohya (sd-scripts, Forge), ComfyUI-native and
diffusers layouts in and out; XLabs and ai-toolkit files in. `resize` and `merge loras` of FLUX files live in
`tools.flux_tools`, `merge into-model` and `extract` with FLUX models in `tools.flux_models` (the SD tools hand FLUX
files and models there); `sample --lora` still refuses FLUX files (the SD reader says so)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..adapters import ADAPTER_LABELS
from ..errors import ToolError, UnsupportedError
from ..formats.check import check_state_dict
from ..formats.flux_check import is_flux_lora
from ..formats.flux_lora import (
    flux_comfyui_state_dict,
    flux_diffusers_state_dict,
    flux_kohya_state_dict,
    flux_metadata,
    read_flux_lora,
)
from ..utils.files import save_safetensors_atomic
from ..utils.tensors import nonfinite_tensors
from .common import check_output

FLUX_TARGETS = ("kohya", "diffusers", "comfyui")
_PARTS = {"unet": "transformer", "te1": "CLIP-L", "te2": "T5-XXL"}
_KEPT_HEADER = ("ss_", "modelspec.", "sshs_", "loraforge_")


def flux_file(sd: dict, metadata: dict | None = None) -> str | None:
    """Evidence that a LoRA state dict is a FLUX.1 file, or None."""
    return is_flux_lora(sd, metadata)


def inspect_lines(sd: dict, metadata: dict, evidence: str) -> list[str]:
    lora = read_flux_lora(sd, metadata)
    mods = list(lora.modules.values())
    kinds = Counter(ADAPTER_LABELS.get(m.kind, m.kind) for m in mods)
    parts = Counter(m.part for m in mods)
    bad = nonfinite_tensors(sd)
    lines = [
        f"kind: LoRA-family file, FLUX.1 {lora.layout} layout",
        f"family: flux ({evidence})",
        "algo: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())),
        "diffusers layers: " + ", ".join(f"{_PARTS[p]} {parts[p]}" for p in _PARTS if parts[p]),
        "unused keys: " + ("none" if not lora.unknown else f"{len(lora.unknown)}: " + ", ".join(
            sorted(lora.unknown)[:5])),
        "values: " + ("all finite" if not bad else f"BROKEN, {len(bad)} tensors hold NaN/Inf"),
    ]
    report = check_state_dict(sd, "flux", metadata)
    lines.append(f"check: {report.summary()}")
    return lines


def convert_flux_lora(src: Path, dst: Path, sd: dict, metadata: dict, to: str | None, overwrite: bool,
                      lora_weight_name: str) -> tuple[str, Path]:
    """Write a FLUX LoRA in layout `to` ("kohya", "diffusers", "comfyui"; default: kohya for a diffusers file, else
    diffusers). Returns (what was done, the file written)."""
    lora = read_flux_lora(sd, metadata)
    if lora.unknown:
        raise UnsupportedError(f"{src}: {len(lora.unknown)} keys name no layer of FLUX.1 "
                               f"({', '.join(sorted(lora.unknown)[:5])}); a converted file must hold every key")
    if not lora.modules:
        raise UnsupportedError(f"{src}: no FLUX LoRA modules found")
    bad = nonfinite_tensors(sd)
    if bad:
        raise UnsupportedError(f"{src}: {len(bad)} tensors hold NaN or infinite values; nothing written")
    target = to or ("kohya" if lora.layout == "diffusers" else "diffusers")
    if target not in FLUX_TARGETS:
        raise ToolError(f"--to {target!r}: FLUX LoRA files convert to {', '.join(FLUX_TARGETS)}")
    if dst.suffix == "" and target == "diffusers":
        dst = dst / lora_weight_name
    if dst.suffix != ".safetensors":
        raise ToolError(f"{dst}: LoRA files are written as .safetensors (or a folder for diffusers)")
    dst = check_output(dst, overwrite)
    modules = list(lora.modules.values())
    kept = {k: v for k, v in metadata.items() if k.startswith(_KEPT_HEADER)}
    if target == "diffusers":
        out, meta = flux_diffusers_state_dict(modules)
        meta.update(kept)
    else:
        writer = flux_kohya_state_dict if target == "kohya" else flux_comfyui_state_dict
        out = writer(modules)
        meta = {**flux_metadata(), **kept}
    save_safetensors_atomic(out, dst, metadata=meta)
    return f"FLUX.1 {lora.layout} LoRA -> {target} LoRA ({len(modules)} diffusers layers)", dst
