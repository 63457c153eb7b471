"""`loraforge merge`: LoRA files into a base model, and checkpoints with checkpoints (LoRA with LoRA: `merge_loras`).

* into a model: `W' = W + Σ sᵢ·ΔWᵢ` (cloneofsimo's "model + α·ΔW", seed-practices.md §14) with separate UNet and
  text-encoder strengths per file, written as a diffusers folder (`pipeline.save_pretrained`) or as one
  original-layout `.safetensors` (LDM / SGM keys) that AUTOMATIC1111, ComfyUI and diffusers' `from_single_file` load
  (`formats.single_file`: diffusers ships only the other direction);
* checkpoints (A1111's checkpoint merger): weighted sum `(1 − m)·A + m·B` and add-difference `A + m·(B − C)`. Two or
  three original-layout `.safetensors` files are merged key by key (memory for one output, any layout the files share;
  as in A1111, an inpainting / instruct-pix2pix A takes B's and C's 4 input channels into the first 4 of its 9 or 8);
  other inputs (diffusers folders, hub ids, `.ckpt` with `--allow-pickle`) are loaded as models and merged per
  component.

FLUX.1 models and LoRAs: `tools.flux_models` (a diffusers folder, or a transformer single file in BFL's layout).

Outputs: a `.safetensors` single file, a diffusers folder (a path without suffix), or a pickle `.ckpt` only with
`write_ckpt` (`--write-ckpt`; A1111's `{"state_dict": ...}` layout).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..errors import FamilyMismatchError, MissingKeyError, ShapeMismatchError, ToolError
from ..families import BASE_MODEL_KEY, tiny_base_model
from ..formats.single_file import (
    CHECKPOINT_SUFFIXES,
    require_checkpoint_suffix,
    save_checkpoint_tensors,
    save_single_file,
)
from ..models.loading import single_file_family
from ..utils.files import atomic_dir, open_safetensors
from .common import LoraSpec, apply_lora_files, check_output, find_lora_file, load_sd_model
from .flux_models import merge_flux_into_model
from .flux_sources import flux_lora_file, is_flux_model

log = logging.getLogger("loraforge.tools")

MODES = ("weighted_sum", "add_difference")
INPUT_CONV = "model.diffusion_model.input_blocks.0.0.weight"


def check_model_output(output, overwrite: bool, write_ckpt: bool = False) -> Path:
    """`check_output` for a model: a `.safetensors` file, a `.ckpt` only with `write_ckpt`, or a folder (no suffix).
    Called before any work is done."""
    output = check_output(output, overwrite)
    if output.suffix.lower() in CHECKPOINT_SUFFIXES:
        require_checkpoint_suffix(output, write_ckpt)
    elif output.suffix:
        raise ToolError(f"{output}: write a .safetensors single file or a folder (no suffix) for diffusers")
    return output


def write_model(model, output, dtype=None, metadata: dict | None = None, overwrite: bool = False,
                write_ckpt: bool = False) -> Path:
    """`.safetensors` (or `.ckpt` with `write_ckpt`) -> one original-layout file; a path without suffix -> a
    diffusers folder. Atomic."""
    output = check_model_output(output, overwrite, write_ckpt)
    if output.suffix:
        if model.is_tiny:  # read back by `models.loading.tiny_single_file`: no --config-dir needed
            metadata = {**(metadata or {}), BASE_MODEL_KEY: tiny_base_model(model.family.name)}
        return save_single_file(output, model.family.name, model.unet, model.vae, model.text_encoders, dtype=dtype,
                                metadata=metadata, overwrite=overwrite, write_ckpt=write_ckpt)
    pipe = model.pipeline()
    if dtype is not None:
        pipe.to(dtype)
    with atomic_dir(output) as tmp:
        pipe.save_pretrained(tmp)
    return output


def merge_into_model(base: str | None, loras: list[LoraSpec], output, *, family: str = "auto", dtype=None,
                     allow_pickle: bool = False, skip_unknown: bool = False, overwrite: bool = False,
                     config_dir: str | None = None, write_ckpt: bool = False) -> Path:
    """Bake the LoRA files into `base` and write the result (see `write_model`). A FLUX.1 model (a diffusers folder,
    a transformer single file, or no base with --family flux / FLUX LoRA files) goes to `tools.flux_models`."""
    if not loras:
        raise ToolError("name at least one LoRA file to merge")
    flux_loras = [s.path for s in loras if flux_lora_file(find_lora_file(s.path), allow_pickle)]
    flux_base = is_flux_model(base, family) or (base is None and family in (None, "auto") and bool(flux_loras))
    if flux_base:
        return merge_flux_into_model(base, loras, output, config_dir=config_dir, dtype=dtype,
                                     allow_pickle=allow_pickle, skip_unknown=skip_unknown, overwrite=overwrite)
    if flux_loras:
        raise FamilyMismatchError(f"{', '.join(flux_loras)}: FLUX.1 LoRA, but the model "
                                  f"{base or 'the embedded tiny model'} is not FLUX.1; merge it into a FLUX.1 model "
                                  "(a diffusers folder or a flux1-dev.safetensors transformer file)")
    check_model_output(output, overwrite, write_ckpt)
    model = load_sd_model(base, family, allow_pickle, config_dir)
    changed = apply_lora_files(model, loras, allow_pickle, skip_unknown)
    log.info("merged %d LoRA file(s) into %d weights", len(loras), changed)
    meta = {"loraforge_base": str(base or f"tiny-{model.family.name}"),
            "loraforge_merged_loras": json.dumps([s.label for s in loras])}
    return write_model(model, output, dtype, meta, overwrite, write_ckpt)


# ---------------------------------------------------------------------------------------------------- checkpoints
def merge_tensor(a, b, c, multiplier: float, mode: str):
    """One tensor of A1111's merger, in float32: weighted sum or add-difference."""
    af, bf = a.float(), b.float()
    if mode == "weighted_sum":
        return af * (1.0 - multiplier) + bf * multiplier
    return af + (bf - c.float()) * multiplier


def _check_mode(mode: str, c) -> None:
    if mode not in MODES:
        raise ToolError(f"unknown merge mode {mode!r}; choose one of {', '.join(MODES)}")
    if (mode == "add_difference") != (c is not None):
        raise ToolError("add_difference needs a third checkpoint C (A + m·(B − C)); weighted_sum takes two")


def _is_single_file(source) -> bool:
    return source is not None and Path(source).suffix == ".safetensors" and Path(source).is_file()


def merge_checkpoints(a: str, b: str, output, *, c: str | None = None, multiplier: float = 0.5,
                      mode: str = "weighted_sum", family: str = "auto", dtype=None, allow_pickle: bool = False,
                      overwrite: bool = False, config_dir: str | None = None, write_ckpt: bool = False) -> Path:
    """A1111-style checkpoint merge; the result takes A's dtype unless `dtype` is given."""
    _check_mode(mode, c)
    output = check_model_output(output, overwrite, write_ckpt)
    sources = [s for s in (a, b, c) if s is not None]
    if all(_is_single_file(s) for s in sources) and output.suffix.lower() in CHECKPOINT_SUFFIXES:
        return _merge_single_files(sources, output, multiplier, mode, dtype, write_ckpt)
    models = [load_sd_model(s, family, allow_pickle, config_dir) for s in sources]
    names = {m.family.name for m in models}
    if len(names) > 1:
        raise FamilyMismatchError(
            "the checkpoints are of different families: " + ", ".join(
                f"{s} ({m.family.label})" for s, m in zip(sources, models)) + "; merge checkpoints of one family")
    first = models[0]
    comps = [("unet", lambda m: m.unet), ("vae", lambda m: m.vae)]
    comps += [(f"text encoder {i + 1}", lambda m, i=i: m.text_encoders[i]) for i in range(len(first.text_encoders))]
    import torch

    with torch.no_grad():
        for label, get in comps:
            states = [get(m).state_dict() for m in models]
            merged = _merge_states(states, multiplier, mode, label)
            get(first).load_state_dict(merged)
    meta = {"loraforge_merge": json.dumps({"mode": mode, "multiplier": multiplier, "sources": sources})}
    return write_model(first, output, dtype, meta, overwrite, write_ckpt)


def _merge_states(states: list[dict], multiplier: float, mode: str, label: str) -> dict:
    a, others = states[0], states[1:]
    _check_keys(a, others, label)
    out = {}
    for key, ta in a.items():
        if not ta.is_floating_point():
            out[key] = ta
            continue
        rest = [s[key] for s in others]
        out[key] = merge_tensor(ta, rest[0], rest[1] if len(rest) > 1 else None, multiplier, mode).to(ta.dtype)
    return out


def _check_keys(a: dict, others: list[dict], label: str) -> None:
    names = "BC"
    for name, other in zip(names, others):
        missing = [k for k in a if k not in other]
        if missing:
            raise MissingKeyError(f"{label}: checkpoint {name} lacks {len(missing)} keys of A, e.g. {missing[:3]}")
        wrong = [f"{k} {tuple(a[k].shape)} vs {tuple(other[k].shape)}" for k in a if other[k].shape != a[k].shape]
        if wrong:
            raise ShapeMismatchError(f"{label}: {len(wrong)} tensors of {name} differ in shape from A: {wrong[:3]}")


def _merge_single_files(sources: list[str], output: Path, multiplier: float, mode: str, dtype,
                        write_ckpt: bool = False) -> Path:
    families = []
    for s in sources:
        with open_safetensors(s) as f:
            if not any(k.startswith("model.diffusion_model.") for k in f.keys()):
                raise ToolError(f"{s} is not a Stable Diffusion checkpoint (no model.diffusion_model.* keys)")
        families.append(single_file_family(Path(s)))
    if len(set(families)) > 1:
        raise FamilyMismatchError(
            "the checkpoints are of different families: " + ", ".join(f"{s} ({f})" for s, f in zip(sources, families))
        )
    handles = [open_safetensors(s) for s in sources]
    keys = [set(h.keys()) for h in handles]
    a_keys = list(handles[0].keys())
    for name, ks in zip("BC", keys[1:]):
        missing = [k for k in a_keys if k not in ks]
        if missing:
            raise MissingKeyError(f"checkpoint {name} lacks {len(missing)} keys of A, e.g. {missing[:3]}")
    out = {}
    for key in a_keys:
        ta = handles[0].get_tensor(key)
        rest = [h.get_tensor(key) for h in handles[1:]]
        channels = None
        for name, t in zip("BC", rest):
            if t.shape == ta.shape:
                continue
            if key == INPUT_CONV and ta.dim() == 4 and ta.shape[1] in (8, 9) and t.shape[1] == 4:
                channels = 4  # A is an inpainting / instruct-pix2pix UNet: merge its first 4 input channels
                continue
            hint = " (the inpainting model must be A)" if key == INPUT_CONV and t.shape[1] in (8, 9) else ""
            raise ShapeMismatchError(f"{key}: A {tuple(ta.shape)} vs {name} {tuple(t.shape)}{hint}")
        if not ta.is_floating_point():
            out[key] = ta
            continue
        if channels:
            merged = ta.float().clone()
            merged[:, :channels] = merge_tensor(ta[:, :channels], rest[0], rest[1] if len(rest) > 1 else None,
                                                multiplier, mode)
        else:
            merged = merge_tensor(ta, rest[0], rest[1] if len(rest) > 1 else None, multiplier, mode)
        out[key] = merged.to(dtype or ta.dtype)
    meta = {"format": "pt", "loraforge_merge": json.dumps({"mode": mode, "multiplier": multiplier, "sources": sources})}
    return save_checkpoint_tensors(out, output, meta, write_ckpt)
