"""Load a Stable Diffusion model from wherever users keep one: a hub id, a local diffusers folder, or a single
`.safetensors` / `.ckpt` file in the original layout. With nothing named, the embedded tiny model is used.

All three paths end in the same `SDModel`: the family, the components, and the noise-scheduler config training
uses. Single files are loaded with diffusers' `from_single_file` and a config folder that loraforge writes itself,
so no hub access is needed (diffusers would otherwise download the default repo's configs).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.model import ModelConfig
from ..errors import ModelLoadError
from ..families import TINY_RESOLUTION, Family, family, tiny_family
from ..families.detect import detect_family_from_folder, family_from_single_file_type
from ..utils.files import PICKLE_SUFFIXES, open_safetensors
from .configs import config_folder
from .flux_files import DIFFUSERS_PROBE, load_flux_pipeline, load_vae, Part
from .tiny import tiny_model_dir
from .toy import TOY_NAME, toy_model_dir

log = logging.getLogger(__name__)

TINY_PROBE_KEY = "model.diffusion_model.input_blocks.0.0.weight"
TINY_UNET_CHANNELS = 32  # block_out_channels[0] of every embedded tiny model (`models.tiny`)
# The image input projection of a FLUX transformer, original and diffusers names: its rows are the transformer's width
# (3072 full-size, 32 in the embedded tiny FLUX)
FLUX_WIDTH_KEYS = ("model.diffusion_model.img_in.weight", "img_in.weight", "x_embedder.weight")
TINY_FLUX_WIDTH = 32

# T5 tokens of a FLUX prompt when `model.max_sequence_length` is unset: as FLUX.1 [dev] / [schnell] were trained
T5_LENGTHS = {"dev": 512, "schnell": 256}
# FLUX.1 [schnell] samples in 4 steps and has no guidance embedding (the guidance scale is ignored: 0 says so)
SCHNELL_SAMPLING = (4, 0.0)


@dataclass
class SDModel:
    family: Family
    source: str
    unet: Any  # the denoiser (`family.denoiser`: a UNet, or FLUX's transformer); its part name is always "unet"
    vae: Any
    text_encoders: list
    tokenizers: list
    scheduler: Any  # the inference scheduler the model ships with
    prediction_type: str
    is_tiny: bool = False  # the embedded tiny architecture (the built-in model, or a single file written from it)
    extra: dict = field(default_factory=dict)

    @property
    def native_size(self) -> int:
        """The side the model was trained at: its UNet's latent size times the VAE's downsampling (a transformer
        has no latent size: 64 for the tiny model, else the family's)."""
        sample_size = getattr(self.unet.config, "sample_size", None)
        if not isinstance(sample_size, int):
            return TINY_RESOLUTION if self.is_tiny else self.family.resolution
        return pixel_size(sample_size, self.vae.config.block_out_channels)

    @property
    def guidance_embeds(self) -> bool:
        """FLUX.1 [dev] (a guidance embedding) rather than [schnell]; False for the UNet families."""
        return bool(getattr(self.unet.config, "guidance_embeds", False))

    @property
    def sample_defaults(self) -> tuple[int, float]:
        """(steps, guidance scale) for a sample that does not set them: the family's, [schnell]'s for a FLUX
        transformer without a guidance embedding."""
        if self.family.is_flow and not self.guidance_embeds:
            return SCHNELL_SAMPLING
        return self.family.sample_steps, self.family.sample_guidance

    def noise_scheduler(self):
        """What training adds noise with: DDPM with the model's own beta schedule, or for a flow-matching family
        (FLUX) its FlowMatchEuler scheduler (its config's shift values)."""
        from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

        if self.family.is_flow:
            return FlowMatchEulerDiscreteScheduler.from_config(self.scheduler.config)
        return DDPMScheduler.from_config(self.scheduler.config, prediction_type=self.prediction_type)

    def pipeline(self, scheduler=None):
        """A diffusers pipeline over these very modules (LoRA layers included)."""
        components = {"vae": self.vae, self.family.denoiser: self.unet,
                      "scheduler": scheduler if scheduler is not None else self.scheduler}
        for te, encoder, tokenizer in zip(self.family.text_encoders, self.text_encoders, self.tokenizers):
            components[te.diffusers], components[te.tokenizer] = encoder, tokenizer
        return self.family.pipeline_class()(**components, **self.family.pipeline_kwargs)


class _LazyCheckpoint(Mapping):
    """Keys of a safetensors file with tensors read on access: enough for diffusers' model-type probe without
    reading gigabytes twice."""

    def __init__(self, path: Path):
        self._f = open_safetensors(path)
        self._keys = list(self._f.keys())
        self.metadata = dict(self._f.metadata() or {})

    def __getitem__(self, key):
        if key not in self._keys:
            raise KeyError(key)
        return self._f.get_tensor(key)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)

    def __contains__(self, key):
        return key in self._keys


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "/", "~", "\\"))
        or Path(name).suffix.lower() in (".safetensors",) + PICKLE_SUFFIXES
        or name.count("/") > 1
        or ":" in name[:3]
    )


def _read_checkpoint(path: Path) -> Mapping:
    if path.suffix.lower() == ".safetensors":
        return _LazyCheckpoint(path)
    import torch

    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a pickle, or objects weights_only refuses
        raise ModelLoadError(f"{path}: not a readable checkpoint ({str(e).splitlines()[0][:200]})") from None
    return ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else {}


def single_file_family(path: Path, config_dir: str | None = None) -> str | None:
    """The family of a single file: that of its config folder when one is given, else diffusers' probe; an
    SGM-layout file with a second text encoder is SDXL whatever the probe says (it looks for `resblocks.9`, which
    small SDXL-layout files lack); a file of an embedded tiny model is that model's family (`tiny_single_file`)."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    if config_dir and (Path(config_dir) / "model_index.json").is_file():
        return detect_family_from_folder(Path(config_dir))
    ckpt = _read_checkpoint(path)
    tiny = tiny_single_file(ckpt)
    if tiny:
        return tiny
    if any(k.startswith("conditioner.embedders.1.") for k in ckpt):
        return "sdxl"
    if DIFFUSERS_PROBE in ckpt and "single_transformer_blocks.0.attn.to_q.weight" in ckpt:
        return "flux"  # a diffusers-layout FLUX transformer file, which diffusers' probe does not know
    return family_from_single_file_type(infer_diffusers_model_type(ckpt))


def tiny_single_file(ckpt: Mapping) -> str | None:
    """The family when a single-file checkpoint holds one of loraforge's embedded tiny models (its `loraforge_base_model`
    metadata, else the tiny UNet's 32-channel input convolution: full-size models have 320), else None. Such a file
    is loaded with the tiny model's configs, so it needs no `config_dir`."""
    meta_family = tiny_family(getattr(ckpt, "metadata", None))
    if meta_family:
        return meta_family
    width = next((ckpt[k] for k in FLUX_WIDTH_KEYS if k in ckpt), None)
    if width is not None:
        return "flux" if width.shape[0] == TINY_FLUX_WIDTH else None
    conv = ckpt.get(TINY_PROBE_KEY) if TINY_PROBE_KEY in ckpt else None
    if conv is None or conv.shape[0] != TINY_UNET_CHANNELS:
        return None
    if any(k.startswith("conditioner.embedders.1.") for k in ckpt):
        return "sdxl"
    return "sd2" if any(k.startswith("cond_stage_model.model.") for k in ckpt) else "sd15"


def _check_family(requested: str, detected: str | None, source: str) -> str:
    if requested != "auto":
        if detected and detected != requested:
            log.warning("model.family = %s but %s looks like %s; using %s as asked", requested, source, detected, requested)
        return requested
    if detected is None:
        raise ModelLoadError(
            f"could not tell which family {source} is; set model.family to sd15, sd2, sdxl or flux"
        )
    return detected


def pixel_size(latent_size: int, vae_block_out_channels) -> int:
    """Image side for a UNet `sample_size`: the VAE halves the size at each level but the last."""
    return latent_size * 2 ** (len(vae_block_out_channels) - 1)


def resolve_model_name(name: str | None) -> str | None:
    """`"toy"` (when no such file or folder exists) is the pretrained toy model's folder; other names as given."""
    if name == TOY_NAME and not Path(name).exists():
        return str(toy_model_dir())
    return name


def native_size(cfg: ModelConfig, family_name: str, is_tiny: bool) -> int:
    """The side the model `[model]` names was trained at, without loading weights: a diffusers folder's UNet
    `sample_size` times its VAE's downsampling (the toy model: 64), else 64 for the tiny models, else the family's."""
    if is_tiny:
        return TINY_RESOLUTION
    name = resolve_model_name(cfg.pretrained_model_name_or_path)
    folder = Path(name).expanduser() if name else None
    if folder is not None and (folder / "unet" / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
        if isinstance(unet.get("sample_size"), int) and vae.get("block_out_channels"):
            return pixel_size(unet["sample_size"], vae["block_out_channels"])
    return family(family_name).resolution


def detect_model_family(cfg: ModelConfig) -> tuple[str, bool]:
    """(family, is_tiny) of the model `[model]` names, without loading its weights (is_tiny: the embedded tiny
    architecture, built in or a single file written from it): the embedded tiny model's
    family, a diffusers folder's configs, a single file's keys (a pickle is read whole), a hub repo's configs.
    Raises the `ModelLoadError` loading it would (no such path, a pickle without `allow_pickle`, an unknown file
    type, an unreachable hub id, a family it cannot tell). `load_model` uses it, so a dry run plans for the very
    family training loads."""
    name = resolve_model_name(cfg.pretrained_model_name_or_path)
    if name is None:
        return ("sd15" if cfg.family == "auto" else cfg.family), True
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(
                f"{path} is a folder but not a diffusers model (no model_index.json); pass the model's folder "
                "or a single .safetensors file"
            )
        return _check_family(cfg.family, detect_family_from_folder(path), str(path)), False
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in PICKLE_SUFFIXES and not cfg.allow_pickle:
            raise ModelLoadError(
                f"{path} is a pickle-based file; unpickling can run code. Convert it with "
                f"`loraforge convert {path} --allow-pickle`, or set model.allow_pickle = true to load it "
                "(loraforge then loads it with torch's weights_only mode)"
            )
        if suffix not in (".safetensors",) + PICKLE_SUFFIXES:
            raise ModelLoadError(f"{path}: unknown model file type {suffix!r}; expected .safetensors or .ckpt")
        if cfg.config_dir and not (Path(cfg.config_dir) / "model_index.json").is_file():
            raise ModelLoadError(
                f"model.config_dir = {cfg.config_dir!r} is not a diffusers folder (no model_index.json)"
            )
        family_name = _check_family(cfg.family, single_file_family(path, cfg.config_dir), str(path))
        # a file of an embedded tiny model has the tiny architecture: trained and sampled at its 64 px
        tiny = (not cfg.config_dir and suffix == ".safetensors"
                and tiny_single_file(_read_checkpoint(path)) == family_name)
        return family_name, tiny
    if _looks_like_path(name):
        raise ModelLoadError(f"model.pretrained_model_name_or_path = {name!r}: no such file or folder")
    return _hub_family(name, cfg), False


def _hub_family(name: str, cfg: ModelConfig) -> str:
    """A hub repo's family from its `model_index.json` (and, for a non-XL pipeline, its UNet config: a 1024-wide
    cross-attention is SD 2.x)."""
    from diffusers import DiffusionPipeline, UNet2DConditionModel

    try:
        index = DiffusionPipeline.load_config(name, revision=cfg.revision)
    except Exception as e:  # network, auth, missing repo: all the same advice
        raise ModelLoadError(
            f"could not fetch {name!r} from the Hugging Face hub ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "Offline? Download it once, or pass a local diffusers folder or a single .safetensors file as "
            "model.pretrained_model_name_or_path"
        ) from None
    cls = index.get("_class_name", "")
    detected = "flux" if cls.startswith("Flux") else "sdxl" if "XL" in cls else None
    if detected is None and "StableDiffusion" in cls:
        detected = "sd15"
        if cfg.family == "auto":
            try:
                unet = UNet2DConditionModel.load_config(name, subfolder="unet", revision=cfg.revision)
            except Exception as e:
                raise ModelLoadError(
                    f"could not read {name!r}'s UNet config from the hub: {str(e).splitlines()[0][:200]}"
                ) from None
            if unet.get("cross_attention_dim") == 1024:
                detected = "sd2"
    return _check_family(cfg.family, detected, name)


def load_model(cfg: ModelConfig, dtype=None) -> SDModel:
    """Load the model described by `[model]`. Raises `ModelLoadError` with an actionable message."""
    name = resolve_model_name(cfg.pretrained_model_name_or_path)
    load_kw: dict[str, Any] = {}
    if dtype is not None:
        load_kw["torch_dtype"] = dtype
    family_name, is_tiny = detect_model_family(cfg)
    fam = family(family_name)
    pipeline_class = fam.pipeline_class()
    path = Path(name).expanduser() if name is not None else None
    if cfg.flux_files and not (fam.is_flow and path is not None and path.is_file()):
        what = "a folder or hub id holds its own text encoders and VAE" if fam.is_flow else f"the model is {fam.label}"
        raise ModelLoadError(f"{', '.join('model.' + f for f in cfg.flux_files)}: component files of a FLUX.1 "
                             f"single file, but {what}; remove them (another VAE: model.vae)")
    if path is None:
        folder = tiny_model_dir(family_name)
        pipe = pipeline_class.from_pretrained(str(folder), local_files_only=True, **load_kw)
        source = f"embedded tiny {fam.label} model ({folder})"
    elif path.is_dir():
        pipe = pipeline_class.from_pretrained(
            str(path), local_files_only=True, variant=cfg.variant, **fam.pipeline_kwargs, **load_kw
        )
        source = str(path)
    elif path.is_file():
        pipe = _load_single_file(cfg, path, fam, is_tiny, dtype, load_kw)
        source = str(path)
    else:
        try:
            pipe = pipeline_class.from_pretrained(
                name, revision=cfg.revision, variant=cfg.variant, **fam.pipeline_kwargs, **load_kw
            )
        except OSError as e:
            raise ModelLoadError(f"could not load {name!r} from the hub: {str(e).splitlines()[0][:300]}") from None
        source = f"hub:{name}"
    if cfg.vae:
        configs = path if path is not None and (path / "vae" / "config.json").is_file() else None
        pipe.vae = _load_vae(cfg.vae, cfg, load_kw, fam, configs or _single_file_configs(cfg, fam, is_tiny))
    prediction = cfg.prediction_type
    if fam.is_flow:
        prediction = "flow"  # noise - latents (`training.flow`); config refuses another prediction_type
    elif prediction == "auto":
        prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
    te = [getattr(pipe, part.diffusers) for part in fam.text_encoders]
    tok = [getattr(pipe, part.tokenizer) for part in fam.text_encoders]
    denoiser = getattr(pipe, fam.denoiser)
    if fam.text_conditioning == "clip-pooled-t5":  # the T5 tokenizer pads / cuts prompts to this many tokens
        variant = "dev" if getattr(denoiser.config, "guidance_embeds", False) else "schnell"
        tok[1].model_max_length = cfg.max_sequence_length or T5_LENGTHS[variant]
    return SDModel(fam, source, denoiser, pipe.vae, te, tok, pipe.scheduler, prediction, is_tiny)


def _single_file_configs(cfg: ModelConfig, fam: Family, is_tiny: bool) -> Path:
    """The diffusers folder whose configs describe a single file: `model.config_dir`, the embedded tiny model's
    folder for a file written from it, else the family's full-size config folder."""
    if cfg.config_dir:
        return Path(cfg.config_dir)
    return tiny_model_dir(fam.name) if is_tiny else config_folder(fam.name)


def _load_single_file(cfg: ModelConfig, path: Path, fam: Family, is_tiny: bool, dtype, load_kw: dict):
    config_dir = _single_file_configs(cfg, fam, is_tiny)
    if fam.is_flow:  # a FLUX transformer file (or all-in-one checkpoint) and its component files
        if path.suffix.lower() != ".safetensors":
            raise ModelLoadError(f"{path}: {fam.label} single files are read as .safetensors; convert it with "
                                 f"`loraforge convert {path} --allow-pickle`")
        t5_from_cache = not cfg.config_dir and not is_tiny  # loraforge's full-size folder has no T5 tokenizer
        return load_flux_pipeline(cfg, path, config_dir, t5_from_cache, dtype)
    try:
        return fam.pipeline_class().from_single_file(
            str(path), config=str(config_dir), local_files_only=True, **fam.pipeline_kwargs, **load_kw
        )
    except (RuntimeError, ValueError, KeyError) as e:  # shapes or keys that do not fit the configs
        raise ModelLoadError(
            f"{path}: its weights do not fit the {fam.label} configs in {config_dir} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); pass the diffusers folder that describes "
            "this file as --config-dir (model.config_dir), or its family (--family / model.family)"
        ) from None


def _load_vae(name: str, cfg: ModelConfig, load_kw: dict, fam: Family, configs: Path):
    """`model.vae`: a diffusers folder, hub id or single file (FLUX's with the VAE config in `configs`)."""
    from diffusers import AutoencoderKL

    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() in PICKLE_SUFFIXES and not cfg.allow_pickle:
            raise ModelLoadError(f"model.vae = {name!r} is a pickle-based file; set model.allow_pickle = true to load it")
        if fam.is_flow and path.suffix.lower() == ".safetensors":  # with FLUX's VAE config, not an SD one
            return load_vae(Part("vae", path), configs, load_kw.get("torch_dtype"))
        return AutoencoderKL.from_single_file(str(path), **load_kw)
    if path.is_dir():
        sub = "vae" if (path / "vae" / "config.json").is_file() else None
        return AutoencoderKL.from_pretrained(str(path), subfolder=sub, local_files_only=True, **load_kw)
    try:
        return AutoencoderKL.from_pretrained(name, **load_kw)
    except OSError as e:
        raise ModelLoadError(
            f"model.vae = {name!r}: not a local file or folder, and the hub could not be reached "
            f"({str(e).splitlines()[0][:200]})"
        ) from None


def model_index(folder: Path) -> dict:
    return json.loads((folder / "model_index.json").read_text())
