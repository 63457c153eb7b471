"""Write a diffusers pipeline as one original-layout `.safetensors` checkpoint (the file A1111 / ComfyUI / Forge load),
read back by the one model loader, `loraforge.models.loading.load_model` (diffusers' `from_single_file` with a local
config folder, no hub access).

Why we write this ourselves: diffusers only converts original -> diffusers (`from_single_file`); the reverse scripts are
not part of the package (see `loraforge.families.ldm`). Prefixes written:

* UNet `model.diffusion_model.*`, VAE `first_stage_model.*` (all families);
* SD 1.x: `cond_stage_model.transformer.text_model.*` (CLIP-L, HF layout);
* SD 2.x: `cond_stage_model.model.*` (OpenCLIP ViT-H layout). The diffusers text encoder has 23 layers (SD 2 reads the
  penultimate layer of the 24-layer OpenCLIP model), so `transformer.resblocks.23` and `text_projection` are not
  written: diffusers' loader skips exactly those keys (`SD_2_TEXT_ENCODER_KEYS_TO_IGNORE`), and the original SD 2 code
  never uses them either (penultimate layer, no projection);
* SDXL: `conditioner.embedders.0.transformer.text_model.*` (CLIP-L) and `conditioner.embedders.1.model.*` (OpenCLIP
  bigG, with `text_projection` stored transposed).

The `position_ids` buffer of CLIP is not written (transformers rebuilds it; diffusers does not read it).

A pickle `.ckpt` (A1111's old layout, `{"state_dict": ...}`) is written only when asked for explicitly
(`write_ckpt`, the CLI's `--write-ckpt`): loading a pickle runs code, and every program that reads `.ckpt` reads
`.safetensors` too.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import FamilyMismatchError, OutputExistsError, PickleRefusedError, ToolError, UnsupportedError
from ..families import FAMILY_NAMES, ldm
from ..families import family as family_info
from ..utils.files import atomic_path, save_safetensors_atomic

CKPT_SUFFIX = ".ckpt"
CHECKPOINT_SUFFIXES = (".safetensors", CKPT_SUFFIX)


def _check_family(family: str) -> None:
    if family not in FAMILY_NAMES:
        raise ValueError(f"unknown family {family!r}; choose one of {sorted(FAMILY_NAMES)}")


def _prefixed(prefix: str, tensors: Mapping[str, Any]) -> dict[str, Any]:
    return {prefix + k: v for k, v in tensors.items()}


def _text_width(text_encoder) -> int:
    return int(text_encoder.config.hidden_size)


def _state_dict(name: str, model) -> dict[str, Any]:
    state = model.state_dict()
    injected = [k for k in state if ".base_layer." in k or ".lora_" in k or "lokr_" in k or "hada_" in k]
    if injected:
        raise ValueError(
            f"the {name} carries adapter layers ({injected[0]!r}, ...); merge and unload them "
            "(e.g. peft's merge_and_unload / diffusers' fuse_lora + unload_lora_weights) before writing a checkpoint"
        )
    return state


def to_single_file_state_dict(family: str, unet, vae, text_encoders: list) -> dict[str, Any]:
    """The original-layout state dict (keys with their `model.diffusion_model.` ... prefixes) of a pipeline's
    components. Tensors are the models' own (no copy) except where the layout needs a new one (fused q|k|v, transposed
    text projection). Works on meta-device models too."""
    _check_family(family)
    text_encoders = list(text_encoders)
    fam = family_info(family)
    if len(text_encoders) != len(fam.text_encoders):
        raise FamilyMismatchError(
            f"{family} takes {len(fam.text_encoders)} text encoder(s), got {len(text_encoders)}: the model "
            "is of another family"
        )
    is_xl_unet = unet.config.get("addition_embed_type") == "text_time"
    if is_xl_unet != fam.size_conditioning:
        kind = unet.config.get("addition_embed_type")
        raise FamilyMismatchError(f"family {family!r} does not match the UNet (addition_embed_type={kind!r})")

    out: dict[str, Any] = {}
    out.update(_prefixed(ldm.UNET_PREFIX, ldm.unet_to_original(_state_dict("UNet", unet), unet.config)))
    out.update(_prefixed(ldm.VAE_PREFIX, ldm.vae_to_original(_state_dict("VAE", vae), vae.config)))
    if len(text_encoders) == 2 and _text_width(text_encoders[0]) == _text_width(text_encoders[1]):
        warnings.warn(
            "SDXL text encoders of equal width: diffusers' from_single_file tells CLIP-L from bigG by width and "
            "would load text_encoder's weights into text_encoder_2",
            stacklevel=2,
        )
    for part, te in zip(fam.text_encoders, text_encoders):
        if part.single_file_prefix == ldm.SD2_TEXT_PREFIX and int(te.config.num_hidden_layers) > 23:
            # diffusers drops `cond_stage_model.model.transformer.resblocks.23.*` by absolute name when loading.
            raise UnsupportedError("an SD 2.x text encoder has at most 23 layers in diffusers form, got "
                                   f"{int(te.config.num_hidden_layers)}")
        convert = ldm.clip_to_open_clip if part.single_file_layout == "open_clip" else ldm.clip_to_original
        out.update(_prefixed(part.single_file_prefix, convert(_state_dict(f"text encoder ({part.diffusers})", te))))
    return out


def require_checkpoint_suffix(path, write_ckpt: bool = False) -> None:
    """A single-file checkpoint is written as `.safetensors`, or as a pickle `.ckpt` with `write_ckpt` only."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == CKPT_SUFFIX and not write_ckpt:
        raise PickleRefusedError(
            f"{path}: a .ckpt is a pickle file, and loading a pickle can run code. Write "
            f"{path.with_suffix('.safetensors').name} instead (A1111, ComfyUI, Forge and diffusers load it), or pass "
            "--write-ckpt to write the pickle anyway (for an old program that reads nothing else)"
        )
    if suffix not in CHECKPOINT_SUFFIXES:
        raise ToolError(f"single-file checkpoints are written as .safetensors (or .ckpt with --write-ckpt), got "
                        f"{path.name!r}")


def save_checkpoint_tensors(tensors: Mapping[str, Any], path, metadata: Mapping[str, str] | None = None,
                            write_ckpt: bool = False) -> Path:
    """Write an original-layout state dict atomically: `.safetensors` with `metadata`, or (with `write_ckpt`) a
    pickle `.ckpt` in A1111's layout `{"state_dict": tensors}` (a pickle has no header: the metadata is dropped)."""
    path = Path(path)
    require_checkpoint_suffix(path, write_ckpt)
    if path.suffix.lower() == CKPT_SUFFIX:
        with atomic_path(path, suffix=CKPT_SUFFIX) as tmp:
            torch.save({"state_dict": {k: v.detach().contiguous().cpu() for k, v in tensors.items()}}, str(tmp))
        return path
    save_safetensors_atomic(dict(tensors), path, metadata={str(k): str(v) for k, v in (metadata or {}).items()})
    return path


def save_single_file(
    path,
    family: str,
    unet,
    vae,
    text_encoders: list,
    dtype=None,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
    write_ckpt: bool = False,
) -> Path:
    """Write the pipeline components as one original-layout `.safetensors` file (or `.ckpt` with `write_ckpt`),
    atomically (a temporary file in the same folder, renamed when complete: an error never leaves a partial file).
    Floating tensors are cast to `dtype` when given. Refuses to replace an existing file unless `overwrite=True`."""
    path = Path(path)
    require_checkpoint_suffix(path, write_ckpt)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass overwrite=True to replace it")
    tensors = to_single_file_state_dict(family, unet, vae, text_encoders)
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    meta = {"format": "pt"}
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    return save_checkpoint_tensors(tensors, path, meta, write_ckpt)
