"""What every tool shares: loading a base model by any name, refusing to overwrite, parsing `FILE:SCALE` specs,
writing a LoRA file."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..config.model import ModelConfig
from ..errors import OutputExistsError, OutputNotWritableError, ToolError
from ..formats.diffusers_lora import WEIGHT_NAME as DIFFUSERS_WEIGHT_NAME
from ..formats.embeddings import EMBEDDINGS_SUFFIX
from ..formats.file_kind import require_kind
from ..formats.lora_apply import apply_loras
from ..formats.lora_file import ModelTree, load_bound
from ..formats.metadata import family_metadata
from ..models.loading import load_model
from ..models.tiny import tiny_model_dir
from ..utils.files import save_safetensors_atomic

log = logging.getLogger("loraforge.tools")

_NUMBER = re.compile(r"^-?\d+(\.\d*)?(e-?\d+)?$|^-?\.\d+$")


def check_output(path, overwrite: bool) -> Path:
    """Refuse an existing output unless `overwrite` (outputs are then replaced atomically), and one that cannot be
    written: its nearest existing folder must be a writable folder (before any work is done)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputNotWritableError(f"cannot write {path}: {folder} is a file, not a folder; choose another output")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputNotWritableError(f"cannot write {path}: the folder {folder} is not writable; choose another "
                                     "output or change the folder's permissions")
    return path


def load_sd_model(source: str | None, family: str = "auto", allow_pickle: bool = False, config_dir: str | None = None,
                  dtype=None):
    """`models.load_model` for a path / hub id / None (the embedded tiny model of `family`); an already loaded
    `SDModel` is returned as it is."""
    if hasattr(source, "unet"):
        return source
    if source is not None:
        require_kind(source, ("model",), "model", ToolError)
    cfg = ModelConfig(pretrained_model_name_or_path=source, family=family or "auto", allow_pickle=allow_pickle,
                      config_dir=config_dir)
    return load_model(cfg, dtype=dtype)


def model_tree(source: str | None, family: str = "auto", allow_pickle: bool = False, config_dir: str | None = None,
               tiny: bool = False):
    """The `ModelTree` LoRA names are resolved against: a diffusers folder's configs (no weights read), a single file
    (loaded), or with no source the full-size model of `family` (its embedded tiny model with `tiny`: the file was
    made for that one, `LoraFile.tiny`, and no family was given)."""
    if source is None:
        if family in (None, "auto"):
            raise ToolError("name the base model (--base) or its family (--family)")
        return ModelTree.from_folder(tiny_model_dir(family)) if tiny else ModelTree.for_family(family)
    if hasattr(source, "unet"):
        return ModelTree.from_model(source)
    path = Path(source)
    if path.is_dir() and (path / "model_index.json").is_file():
        return ModelTree.from_folder(path)
    return ModelTree.from_model(load_sd_model(source, family, allow_pickle, config_dir))


def model_parts(model) -> dict:
    parts = {"unet": model.unet}
    for i, te in enumerate(model.text_encoders):
        parts[f"te{i + 1}"] = te
    return parts


@dataclass
class LoraSpec:
    """A LoRA file with its strengths: `unet` for the UNet modules, `te` for the text-encoder ones."""

    path: str
    unet: float = 1.0
    te: float = 1.0

    @property
    def label(self) -> str:
        scale = f"{self.unet:g}" if self.unet == self.te else f"{self.te:g}:{self.unet:g}"
        return f"{Path(self.path).stem}:{scale}"


def split_spec(spec: str) -> tuple[str, list[str]]:
    """`a.safetensors:0.8:te=0.5` -> ("a.safetensors", ["0.8", "te=0.5"]); colons inside the path (C:\\...) stay."""
    parts = spec.split(":")
    fields: list[str] = []
    while len(parts) > 1 and (_NUMBER.match(parts[-1]) or re.match(r"^(unet|te)=", parts[-1])):
        fields.insert(0, parts.pop())
    return ":".join(parts), fields


def _check_tail(spec: str, path: str, what: str) -> None:
    """`lora.safetensors:heavy`: the file exists and `heavy` is no number, so it is a bad weight, not a file name."""
    head, sep, tail = path.rpartition(":")
    if sep and head and not Path(path).exists() and Path(head).exists():
        form = "FILE:0.8 or FILE:unet=0.6:te=0.9" if what == "scale" else "FILE or FILE:WEIGHT, e.g. FILE:0.7"
        raise ToolError(f"{spec!r}: {tail!r} is not a {what}; write {form}")


def parse_lora_spec(spec: str, unet_scale: float = 1.0, te_scale: float = 1.0) -> LoraSpec:
    """`FILE`, `FILE:W` (both parts), `FILE:unet=U:te=T` or `FILE:W:te=T`; multiplied by the global scales."""
    path, fields = split_spec(spec)
    _check_tail(spec, path, "scale")
    unet = te = 1.0
    for f in fields:
        try:
            if f.startswith("unet="):
                unet = float(f[5:])
            elif f.startswith("te="):
                te = float(f[3:])
            else:
                unet = te = float(f)
        except ValueError:
            raise ToolError(f"{spec!r}: {f!r} is not a scale; write FILE:0.8 or FILE:unet=0.6:te=0.9") from None
    return LoraSpec(path, unet * unet_scale, te * te_scale)


def parse_weighted(spec: str, default: float = 1.0) -> tuple[str, float]:
    """`FILE[:W]`."""
    path, fields = split_spec(spec)
    _check_tail(spec, path, "weight")
    if len(fields) > 1 or (fields and not _NUMBER.match(fields[0])):
        raise ToolError(f"{spec!r}: write FILE or FILE:WEIGHT")
    return path, float(fields[0]) if fields else default


def save_lora(sd: dict, path, metadata: dict | None, overwrite: bool) -> Path:
    path = check_output(path, overwrite)
    if path.suffix != ".safetensors":
        raise ToolError(f"{path}: LoRA files are written as .safetensors")
    save_safetensors_atomic(sd, path, metadata={str(k): str(v) for k, v in (metadata or {}).items()})
    return path


def refuse_layout(to: str | None) -> None:
    """`--to` picks the layout of FLUX.1 outputs only: an SD LoRA is written in the kohya layout."""
    if to not in (None, "kohya"):
        raise ToolError(f"--to {to}: Stable Diffusion LoRAs are written in the kohya layout (--to is for FLUX.1 "
                        "files); convert the result with `loraforge convert --to diffusers`")


def lora_metadata(source_meta: dict | None, family: str, **extra) -> dict[str, str]:
    """The source file's metadata (minus stale hashes), the family keys A1111 / ComfyUI managers show, and what
    the tool did."""
    meta = {k: v for k, v in (source_meta or {}).items() if not k.startswith("sshs_") and k != "format"}
    for k, v in family_metadata(family).items():
        meta.setdefault(k, v)
    meta["loraforge_version"] = str(__version__)
    for k, v in extra.items():
        meta[f"loraforge_{k}"] = str(v)
    return meta


def find_lora_file(path) -> Path:
    """A LoRA file, or the one a folder holds: a training run folder's kohya file (`<output_name>.safetensors`),
    else a diffusers LoRA folder's `pytorch_lora_weights.safetensors`."""
    path = Path(path)
    if not path.is_dir():
        return path
    named = path / f"{path.name}.safetensors"
    if named.is_file():
        return named
    kohya = [p for p in path.glob("*.safetensors") if p.name != DIFFUSERS_WEIGHT_NAME and not p.stem.endswith(EMBEDDINGS_SUFFIX)]
    if len(kohya) == 1:
        return kohya[0]
    if not kohya and (path / DIFFUSERS_WEIGHT_NAME).is_file():
        return path / DIFFUSERS_WEIGHT_NAME
    found = ", ".join(sorted(p.name for p in kohya)) or "no LoRA file"
    raise ToolError(f"{path} is a folder with {found}; name the LoRA file itself")


def apply_lora_files(model, loras: list[LoraSpec], allow_pickle: bool = False, skip_unknown: bool = False) -> int:
    """Patch `model` (an `SDModel`) with the LoRA files in place; returns the number of weights changed."""
    if not loras:
        return 0
    tree = ModelTree.from_model(model)
    for s in loras:
        require_kind(find_lora_file(s.path), ("lora",), "--lora", ToolError)
    bound = [(load_bound(find_lora_file(s.path), tree, allow_pickle, skip_unknown), s.unet, s.te) for s in loras]
    for lora, _, _ in bound:
        parts = sorted({m.part for m in lora.modules.values()})
        log.info("%s: %d modules (%s)", lora.source, len(lora.modules), ", ".join(parts))
    return apply_loras(model_parts(model), bound)
