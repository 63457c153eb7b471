"""What the FLUX.1 tools read: FLUX LoRA files against the transformer they were made for, and FLUX models as a
diffusers folder (or the embedded tiny FLUX) or as a transformer single file in the original (BFL) layout.

The transformer config decides how a kohya file's fused layers split (`double_blocks.N.img_attn.qkv` holds three
rows of the attention width), so a LoRA file is read against: the model the command names (`--base`, the model merged
into), else the embedded tiny FLUX when the file says it was made for it (`loraforge_base_model = tiny-flux`) or has
its attention width, else the full-size FLUX.1 [dev]. A single file is matched the same way (`--config-dir` names
its diffusers folder)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import FamilyMismatchError, MissingKeyError, NonFiniteTensorError, ShapeMismatchError, ToolError
from ..errors import UnsupportedError
from ..families import tiny_family
from ..families.flux import FLUX, FluxLayout, flux_components
from ..formats.flux_check import is_flux_lora
from ..formats.flux_lora import FluxLora, read_flux_lora
from ..formats.flux_single_file import PREFIXES, read_flux_transformer
from ..formats.lora_file import read_tensors
from ..models.tiny import tiny_model_dir
from ..utils.files import PICKLE_SUFFIXES, open_safetensors
from ..utils.tensors import describe_nonfinite, nonfinite_tensors
from .common import load_sd_model

PROBE = "double_blocks.0.img_attn.qkv.weight"  # the first weight of every original-layout FLUX transformer
# the down / A tensor of a layer whose input is the attention width, in any FLUX LoRA layout
_WIDTH_KEY = re.compile(r"(img_attn[._]qkv|attn[._]to_q|[._]linear1|qkv_lora1?)[._](lora_down|lora_A|down)\.weight$")


# ------------------------------------------------------------------------------------------------------- configs
def folder_config(folder) -> dict:
    """The diffusers `FluxTransformer2DModel` config of a FLUX diffusers folder."""
    path = Path(folder) / "transformer" / "config.json"
    if not path.is_file():
        raise ToolError(f"{folder}: no transformer/config.json; name a diffusers FLUX.1 folder")
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def tiny_text_configs() -> tuple[dict, dict]:
    """(CLIP-L config, T5 config) of the embedded tiny FLUX, for the consumer check of its files."""
    folder = tiny_model_dir(FLUX)
    return tuple(json.loads((folder / sub / "config.json").read_text()) for sub in ("text_encoder", "text_encoder_2"))


def full_config() -> dict:
    return dict(flux_components()["transformer"])


def tiny_config() -> dict:
    return folder_config(tiny_model_dir(FLUX))


def inner_width(config: dict) -> int:
    return FluxLayout.from_config(config).inner


def _by_width(width: int | None, what: str) -> tuple[dict, bool]:
    """(config, tiny) for a transformer of attention width `width` (None: full size)."""
    full = full_config()
    if width is None or width == inner_width(full):
        return full, False
    tiny = tiny_config()
    if width == inner_width(tiny):
        return tiny, True
    raise ShapeMismatchError(f"{what}: attention width {width} is neither full-size FLUX.1 ({inner_width(full)}) "
                             f"nor the embedded tiny FLUX ({inner_width(tiny)}); name the model it is for (--base "
                             "or --config-dir, a diffusers FLUX.1 folder)")


def lora_config(sd: dict, metadata: dict | None, what: str) -> tuple[dict, bool]:
    """(transformer config, tiny) a FLUX LoRA state dict was made for (see the module docstring)."""
    if tiny_family(metadata) == FLUX:
        return tiny_config(), True
    return _by_width(lora_width(sd), what)


def lora_width(sd: dict) -> int | None:
    """The attention width a FLUX LoRA's q / qkv layers take, or None when it has none of them."""
    return next((int(v.shape[1]) for k, v in sd.items() if _WIDTH_KEY.search(k) and v.dim() == 2), None)


# --------------------------------------------------------------------------------------------------- LoRA files
def file_header(path, allow_pickle: bool = False) -> tuple[list[str], dict]:
    """(keys, metadata) of a LoRA file without reading its tensors (a pickle is read whole)."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES or not path.is_file():
        sd, metadata = read_tensors(path, allow_pickle)
        return list(sd), metadata
    with open_safetensors(path) as f:
        return list(f.keys()), dict(f.metadata() or {})


def flux_lora_file(path, allow_pickle: bool = False) -> str | None:
    """Evidence that the LoRA file at `path` is for FLUX.1, or None."""
    keys, metadata = file_header(path, allow_pickle)
    return is_flux_lora(keys, metadata)


@dataclass
class FluxFile:
    """A FLUX LoRA file read into modules on diffusers paths (`formats.flux_lora.read_flux_lora`)."""

    source: str
    sd: dict
    metadata: dict
    lora: FluxLora
    config: dict  # the transformer config it was read against
    tiny: bool
    nonfinite: dict = field(default_factory=dict)

    def require_known(self, skip_unknown: bool = False, hint: str = "pass --skip-unknown to use the rest") -> None:
        if self.lora.unknown and not skip_unknown:
            keys = sorted(self.lora.unknown)
            raise MissingKeyError(f"{self.source}: {len(keys)} keys name no layer of FLUX.1 ({hint}): "
                                  + ", ".join(f"{k} ({self.lora.unknown[k]})" for k in keys[:5]))


def read_flux_file(path, allow_pickle: bool = False, config: dict | None = None, tiny: bool = False,
                   tensors: tuple[dict, dict] | None = None) -> FluxFile:
    """Read a FLUX LoRA file (`tensors`: its (state dict, metadata) when already read) against `config` (None: the
    transformer the file was made for). Refuses another family's file, NaN / Inf values and a file without modules."""
    sd, metadata = tensors if tensors is not None else read_tensors(path, allow_pickle)
    if not is_flux_lora(sd, metadata):
        raise FamilyMismatchError(f"{path} is not a FLUX.1 LoRA (no FLUX module names, no ss_base_model_version = "
                                  "flux1): the FLUX.1 tools take FLUX.1 LoRA files only")
    if config is None:
        config, tiny = lora_config(sd, metadata, str(path))
    else:
        width = lora_width(sd)
        if width is not None and width != inner_width(config):
            raise ShapeMismatchError(f"{path} is a LoRA for a FLUX transformer of attention width {width}; the model's "
                                     f"is {inner_width(config)}. Is it a LoRA of another model?")
    bad = nonfinite_tensors(sd)
    if bad:
        raise NonFiniteTensorError(f"{path}: {len(bad)} tensors hold NaN or infinite values, so every weight the file "
                                   f"touches would become NaN: {describe_nonfinite(bad)}. Use another file (an earlier "
                                   "checkpoint of the run)")
    lora = read_flux_lora(sd, metadata, config)
    if not lora.modules:
        raise UnsupportedError(f"{path}: no FLUX LoRA modules found")
    return FluxFile(str(path), sd, metadata, lora, config, tiny)


# --------------------------------------------------------------------------------------------------------- models
def single_file_prefix(path) -> str | None:
    """The key prefix of an original-layout FLUX transformer file ("" when bare), or None when `path` is no such
    file."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    with open_safetensors(path) as f:
        keys = set(f.keys())
    return next((p for p in ("",) + PREFIXES if p + PROBE in keys), None)


def is_flux_folder(path) -> bool:
    index = Path(path) / "model_index.json"
    return index.is_file() and str(json.loads(index.read_text()).get("_class_name", "")).startswith("Flux")


def is_flux_model(source, family: str = "auto") -> bool:
    """Whether a model name (a folder, a single file; None with family "flux": the embedded tiny FLUX) is FLUX.1."""
    if family == FLUX:
        return True
    if source is None or hasattr(source, "unet"):
        return getattr(getattr(source, "family", None), "name", None) == FLUX
    path = Path(source)
    return is_flux_folder(path) if path.is_dir() else single_file_prefix(path) is not None


@dataclass
class FluxSource:
    """A FLUX.1 model as the tools use it: a diffusers folder (or the embedded tiny FLUX) loaded whole (`model`), or a
    transformer single file read into diffusers names (`transformer_sd`, its key `prefix`)."""

    source: str
    config: dict  # the transformer's diffusers config
    tiny: bool
    model: object | None = None
    transformer_sd: dict | None = None
    prefix: str = ""

    @property
    def single_file(self) -> bool:
        return self.model is None

    def transformer_weights(self) -> dict[str, torch.Tensor]:
        return self.transformer_sd if self.model is None else self.model.unet.state_dict()

    def text_encoders(self) -> dict:
        """{"te1": CLIP-L, "te2": T5} of a folder; none for a single file (it holds the transformer only)."""
        if self.model is None:
            return {}
        return {f"te{i + 1}": te for i, te in enumerate(self.model.text_encoders)}


def file_config(path, config_dir=None) -> tuple[dict, bool]:
    """(transformer config, tiny) of an original-layout transformer file: `config_dir`'s, else the embedded tiny
    FLUX's when the file says so or has its width, else full size."""
    if config_dir:
        return folder_config(config_dir), False
    prefix = single_file_prefix(path)
    with open_safetensors(path) as f:
        metadata = dict(f.metadata() or {})
        qkv = f.get_slice(prefix + PROBE).get_shape()
    if tiny_family(metadata) == FLUX:
        return tiny_config(), True
    return _by_width(int(qkv[1]), str(path))


def source_config(source, config_dir=None) -> tuple[dict, bool]:
    """(transformer config, tiny) of a FLUX model by name without reading its weights (a hub id is loaded)."""
    if source is not None and single_file_prefix(source) is not None:
        return file_config(source, config_dir)
    if source is None:
        return tiny_config(), True
    if Path(source).is_dir():
        config = folder_config(source)
        small = inner_width(config) != inner_width(full_config())
        return config, small and Path(source).resolve() == tiny_model_dir(FLUX).resolve()
    loaded = load_flux_source(source, config_dir)
    return loaded.config, loaded.tiny


def load_flux_source(source, config_dir=None, allow_pickle: bool = False) -> FluxSource:
    """A FLUX model by name: an original-layout transformer `.safetensors`, a diffusers folder or hub id, or None
    (the embedded tiny FLUX)."""
    prefix = single_file_prefix(source) if source is not None else None
    if prefix is not None:
        config, tiny = file_config(source, config_dir)
        return FluxSource(str(source), config, tiny, transformer_sd=read_flux_transformer(source, config),
                          prefix=prefix)
    model = load_sd_model(source, FLUX, allow_pickle, config_dir)
    if model.family.name != FLUX:
        raise FamilyMismatchError(f"{source} is a {model.family.label} model, not FLUX.1")
    config = {k: v for k, v in dict(model.unet.config).items() if not k.startswith("_")}
    return FluxSource(str(source or model.source), config, bool(model.is_tiny), model=model)
