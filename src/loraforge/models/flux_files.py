"""FLUX.1 from the single files users keep (ComfyUI, kohya sd-scripts, Forge): the transformer file
(`flux1-dev.safetensors`, the original BFL layout, bare or under `model.diffusion_model.`; a diffusers-layout
transformer file too) plus the CLIP-L (`clip_l`), T5-XXL (`t5xxl`) and autoencoder (`ae`) files, or one all-in-one
checkpoint that holds them all (ComfyUI's FLUX checkpoint layout: `model.diffusion_model.`, `text_encoders.clip_l.
transformer.`, `text_encoders.t5xxl.transformer.`, `vae.`, as ComfyUI's `supported_models.Flux` reads and saves it).

The configs come from a diffusers folder (`model.config_dir`, the embedded tiny FLUX for its own files, else the
full-size configs loraforge writes). Float8 tensors (`flux1-dev-fp8`, `t5xxl_fp8_e4m3fn`) are upcast to the load
precision as they are read. What loads:

* the transformer: our config-driven name table (`families.flux`), then a strict `load_state_dict` on a model built
  without weights. Why not diffusers' `FluxTransformer2DModel.from_single_file`: its converter hard-codes the
  full-size width (3072), so any other size (the tiny FLUX) is split wrongly, and it leaves missing weights unset
  instead of failing;
* the VAE: diffusers' `AutoencoderKL.from_single_file` (its own LDM/BFL converter), then a check that every weight
  was in the file;
* the text encoders: transformers' `from_pretrained(None, config=..., state_dict=...)` (it maps `text_model.` keys
  and ties T5's embeddings), refusing missing, mis-shaped or foreign weights.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError
from ..families.architectures import FLUX_SCHNELL_OVERRIDES
from ..families.flux import TRANSFORMER_PREFIXES, original_to_diffusers, strip_prefix
from ..utils.files import open_safetensors
from .tokenizer import clip_tokenizer

log = logging.getLogger(__name__)

# The parts of an all-in-one FLUX checkpoint (ComfyUI's layout) and what a user passes instead of each
ALL_IN_ONE_PREFIXES = {"clip_l": "text_encoders.clip_l.transformer.", "t5xxl": "text_encoders.t5xxl.transformer.",
                       "ae": "vae."}
FILE_NAMES = {"clip_l": "clip_l.safetensors", "t5xxl": "t5xxl_fp16.safetensors", "ae": "ae.safetensors",
              "vae": "ae.safetensors"}  # model.vae: a replacement VAE file, read as `ae` is
LABELS = {"clip_l": "CLIP-L text encoder", "t5xxl": "T5-XXL text encoder", "ae": "autoencoder (VAE)",
          "vae": "replacement VAE"}
BFL_PROBE = "double_blocks.0.img_attn.qkv.weight"
DIFFUSERS_PROBE = "transformer_blocks.0.attn.to_q.weight"
# Weights some text-encoder files carry that FLUX never uses (CLIP's projection and logit scale of SD3-style files)
HARMLESS_EXTRAS = ("text_projection.weight", "logit_scale", "text_model.embeddings.position_ids",
                   "embeddings.position_ids")
# Keys of ComfyUI's scaled-fp8 files (`t5xxl_fp8_e4m3fn_scaled`): a marker and a scale per weight
SCALED_FP8_KEYS = ("scaled_fp8", "scale_weight", "scale_input")
T5_VOCAB = 32000  # SentencePiece pieces of T5's tokenizer (32,100 with its extra ids)
TOKENIZER_FILES = {"tokenizer": ("tokenizer.json", "vocab.json"), "tokenizer_2": ("tokenizer.json", "spiece.model")}
# Where FLUX's T5 tokenizer is looked for in the Hugging Face cache (and then on the hub): FLUX.1's own, then the
# one kohya sd-scripts downloads (google/t5-v1_1-xxl ships only `spiece.model`: needs the sentencepiece package)
T5_TOKENIZER_REPOS = (("black-forest-labs/FLUX.1-dev", "tokenizer_2"), ("black-forest-labs/FLUX.1-schnell", "tokenizer_2"),
                      ("google/t5-v1_1-xxl", None))


@dataclass(frozen=True)
class Part:
    """Where one component's tensors are: a file, and the key prefix they sit under there ("" when bare)."""

    field: str
    path: Path
    prefix: str = ""


def safetensors_keys(path: Path) -> list[str]:
    with open_safetensors(path) as f:
        return list(f.keys())


def read_tensors(path: Path, prefix: str = "", dtype=None, what: str = "") -> dict:
    """The tensors of `path` under `prefix` (prefix removed), floating ones in `dtype` (None: float32, as diffusers
    loads a folder without a dtype); float8 tensors are upcast (and said so in the log)."""
    import torch

    target = dtype or torch.float32
    out, upcast = {}, set()
    with open_safetensors(path) as f:
        scaled = [k for k in f.keys() if k.startswith(prefix) and k.rpartition(".")[2] in SCALED_FP8_KEYS]
        if scaled:
            raise ModelLoadError(
                f"{path}{f' ({what})' if what else ''}: a scaled-fp8 file (ComfyUI's `*_fp8_scaled`, with {scaled[0]}), "
                "whose weights are stored divided by a per-tensor scale: not read yet; use the plain fp8 or fp16 file "
                "(t5xxl_fp8_e4m3fn.safetensors / t5xxl_fp16.safetensors, flux1-dev.safetensors)"
            )
        for key in f.keys():
            if not key.startswith(prefix):
                continue
            t = f.get_tensor(key)
            if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
                upcast.add(str(t.dtype).removeprefix("torch."))
            if t.is_floating_point():
                t = t.to(target)
            out[key[len(prefix):]] = t
    if upcast:
        log.info("%s%s stores %s weights: upcast to %s as they are read (the file is unchanged)",
                 path.name, f" ({what})" if what else "", ", ".join(sorted(upcast)), str(target).removeprefix("torch."))
    return out


def transformer_file_layout(keys) -> tuple[str, str, bool]:
    """(layout "original" or "diffusers", key prefix, has a guidance embedding: [dev] rather than [schnell]) of a
    FLUX transformer file's keys. Raises `ModelLoadError` for a file that is neither."""
    _, prefix = strip_prefix(dict.fromkeys(keys))
    if prefix + BFL_PROBE in keys:
        return "original", prefix, any(k.startswith(prefix + "guidance_in.") for k in keys)
    if DIFFUSERS_PROBE in keys:
        return "diffusers", "", any(k.startswith("time_text_embed.guidance_embedder.") for k in keys)
    raise ModelLoadError(f"not a FLUX.1 transformer file in the original layout (no {BFL_PROBE}, with or without "
                         f"{TRANSFORMER_PREFIXES[0]}) nor in diffusers' ({DIFFUSERS_PROBE})")


def read_flux_transformer_file(path: Path, config: dict | None = None, dtype=None) -> dict:
    """The diffusers `FluxTransformer2DModel` state dict of a transformer file: original (BFL) layout, bare or under
    `model.diffusion_model.` (only those keys are read: an all-in-one file's other parts are left alone), converted
    through `families.flux` for `config` (None: full-size [dev]); or a diffusers-layout file as it is."""
    path = Path(path)
    try:
        layout, prefix, _ = transformer_file_layout(safetensors_keys(path))
    except ModelLoadError as e:
        raise ModelLoadError(f"{path}: {e}") from None
    body = read_tensors(path, prefix, dtype, "transformer")
    if layout == "diffusers":
        return body
    out, unused = original_to_diffusers(body, config)
    if unused:
        raise ModelLoadError(f"{path}: {len(unused)} keys are no weight of the FLUX.1 transformer "
                             f"({', '.join(unused[:5])}); is it another model, or pass its transformer config")
    return out


def component_parts(cfg, path: Path) -> dict[str, Part]:
    """Where the CLIP-L, T5 and VAE weights are: the files `[model]` names (`clip_l`, `t5xxl`, `ae`), else the model
    file itself when it is an all-in-one checkpoint holding that part. Raises one `ModelLoadError` naming every part
    found nowhere, with the field to set."""
    keys = None
    parts, missing = {}, []
    given = [f for f in ALL_IN_ONE_PREFIXES if getattr(cfg, f)]
    for field_name, prefix in ALL_IN_ONE_PREFIXES.items():
        value = getattr(cfg, field_name)
        if value:
            file = Path(value).expanduser()
            if not file.is_file():
                raise ModelLoadError(f"model.{field_name} = {value!r}: no such file; pass the {LABELS[field_name]} "
                                     f"file ({FILE_NAMES[field_name]})")
            if file.suffix.lower() != ".safetensors":
                raise ModelLoadError(f"model.{field_name} = {value!r}: FLUX component files are read as .safetensors "
                                     f"(no pickles); pass the {FILE_NAMES[field_name]} file")
            own = safetensors_keys(file)
            parts[field_name] = Part(field_name, file, prefix if any(k.startswith(prefix) for k in own) else "")
            continue
        keys = keys if keys is not None else safetensors_keys(path)
        if any(k.startswith(prefix) for k in keys):
            parts[field_name] = Part(field_name, path, prefix)
        else:
            missing.append(field_name)
    if missing:
        found = "holds only the transformer" if len(parts) == len(given) else "lacks some FLUX.1 parts"
        raise ModelLoadError(
            f"{path.name} {found}; the parts it lacks come from their own files: "
            + "; ".join(f"model.{f}: pass the {LABELS[f]} file ({FILE_NAMES[f]}, kohya's --{f})" for f in missing)
            + " (in a config: [model] " + ", ".join(f"{f} = \"...\"" for f in missing) + ")"
        )
    return parts


def _meta_params(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.device.type == "meta"]


def _short(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:240] if str(e).strip() else ''}"


def load_transformer(path: Path, configs: Path, dtype):
    """The `FluxTransformer2DModel` of a transformer file, with the config of `configs/transformer` ([schnell]'s
    missing guidance embedding follows the file)."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    config = json.loads((configs / "transformer" / "config.json").read_text())
    try:
        _, _, guidance = transformer_file_layout(safetensors_keys(path))
    except ModelLoadError as e:
        raise ModelLoadError(f"{path}: {e}") from None
    if guidance != bool(config.get("guidance_embeds", True)):
        log.info("%s %s a guidance embedding: loaded as FLUX.1 [%s]", path.name, "has" if guidance else "has no",
                 "dev" if guidance else "schnell")
        config = {**config, "guidance_embeds": guidance}
    sd = read_flux_transformer_file(path, config, dtype)
    with init_empty_weights():
        model = FluxTransformer2DModel.from_config(config)
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        raise ModelLoadError(
            f"{path}: its weights do not fit the FLUX.1 transformer config in {configs / 'transformer'} ({_short(e)}); "
            "pass the diffusers folder that describes this model as model.config_dir (--config-dir)"
        ) from None
    return model.eval()  # its weights are the file's, already in the load precision (`read_tensors`)


def load_vae(part: Part, configs: Path, dtype):
    """The FLUX VAE from an `ae.safetensors` (original LDM/BFL layout) or diffusers-layout file, with `configs/vae`:
    diffusers' own converter and loader, after a check that the file holds every weight (diffusers' loader would
    leave a missing one unset and fail later, obscurely)."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    sd = read_tensors(part.path, part.prefix, dtype, LABELS[part.field])
    config = AutoencoderKL.load_config(str(configs), subfolder="vae", local_files_only=True)
    with init_empty_weights():
        expected = set(AutoencoderKL.from_config(config).state_dict())
    if not expected.issubset(sd):  # the original layout (a diffusers-layout file is taken as it is)
        sd = convert_ldm_vae_checkpoint(sd, config)
    missing = sorted(expected - set(sd))
    if missing:
        raise _part_error(part, configs / "vae", f"{len(missing)} weights missing: {', '.join(missing[:4])}")
    try:
        vae = AutoencoderKL.from_single_file({k: sd[k] for k in expected}, config=str(configs), subfolder="vae",
                                             local_files_only=True, torch_dtype=dtype or torch.float32)
    except (RuntimeError, ValueError) as e:  # shapes that do not fit the config
        raise _part_error(part, configs / "vae", _short(e)) from None
    return vae.eval()


def load_text_encoder(part: Part, configs: Path, subfolder: str, dtype):
    """CLIP-L (`text_encoder`) or T5 (`text_encoder_2`) from transformers-keyed weights, with the config in
    `configs/subfolder`: every weight of the model must be in the file, with its shape."""
    import torch
    from transformers import AutoConfig, CLIPTextModel, T5EncoderModel

    cls = CLIPTextModel if subfolder == "text_encoder" else T5EncoderModel
    config = AutoConfig.from_pretrained(str(configs / subfolder), local_files_only=True)
    sd = read_tensors(part.path, part.prefix, dtype, LABELS[part.field])
    sd = {k: v for k, v in sd.items() if k not in HARMLESS_EXTRAS}
    try:
        model, info = cls.from_pretrained(None, config=config, state_dict=sd, dtype=dtype or torch.float32,
                                          output_loading_info=True)
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        raise _part_error(part, configs / subfolder, _short(e)) from None
    problems = []
    for kind in ("missing_keys", "mismatched_keys", "unexpected_keys"):
        keys = sorted(str(k) for k in info.get(kind) or ())
        if keys:
            problems.append(f"{len(keys)} {kind.replace('_keys', '')}: {', '.join(keys[:3])}")
    if problems or _meta_params(model):
        raise _part_error(part, configs / subfolder, "; ".join(problems) or "weights left unset")
    return model.eval()


def _part_error(part: Part, config: Path, why: str) -> ModelLoadError:
    where = f"{part.path} (keys under {part.prefix!r})" if part.prefix else str(part.path)
    return ModelLoadError(
        f"model.{part.field}: {where} is not the {LABELS[part.field]} the configs in {config} describe ({why}); "
        f"pass the {FILE_NAMES[part.field]} file of this FLUX.1 model, or the diffusers folder that describes it as "
        "model.config_dir"
    )


def flux_tokenizers(configs: Path, t5_from_cache: bool):
    """(CLIP tokenizer, T5 tokenizer): from the config folder (`model.config_dir`, the tiny FLUX's), or with
    `t5_from_cache` (loraforge's full-size config folder, which holds no T5 tokenizer) the shipped CLIP tokenizer and
    FLUX's T5 tokenizer from the Hugging Face cache."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    if not t5_from_cache:
        # transformers builds an empty tokenizer from a folder without tokenizer files: look for them first
        lacking = [f"{sub}/ ({' or '.join(names)})" for sub, names in TOKENIZER_FILES.items()
                   if not any((configs / sub / n).is_file() for n in names)]
        if lacking:
            raise ModelLoadError(f"model.config_dir = {str(configs)!r}: no tokenizer files in {', '.join(lacking)}; "
                                 "pass a FLUX.1 diffusers folder (its configs and tokenizers suffice)")
        try:
            return (CLIPTokenizer.from_pretrained(str(configs / "tokenizer")),
                    T5TokenizerFast.from_pretrained(str(configs / "tokenizer_2")))
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"model.config_dir = {str(configs)!r}: its tokenizers cannot be read ({_short(e)}); "
                                 "pass a FLUX.1 diffusers folder") from None
    return clip_tokenizer(), t5_tokenizer_from_cache()


def t5_tokenizer_from_cache():
    """FLUX's T5 tokenizer (32,100 SentencePiece tokens; loraforge does not ship it) from the Hugging Face cache,
    else downloaded from the hub unless offline. A clear `ModelLoadError` with the fix when neither works."""
    from transformers import T5TokenizerFast

    errors = []
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    for local in (True, False) if not offline else (True,):
        for repo, sub in T5_TOKENIZER_REPOS:
            try:
                kwargs = {"subfolder": sub} if sub else {}
                tok = T5TokenizerFast.from_pretrained(repo, local_files_only=local, **kwargs)
            except Exception as e:  # not cached, no network, a gated repo, sentencepiece missing: try the next
                errors.append(f"{repo}: {_short(e)[:120]}")
                continue
            if len(tok) >= T5_VOCAB:  # without files transformers returns an empty tokenizer (its 100 extra ids)
                return tok
            errors.append(f"{repo}: no tokenizer files{' in the cache' if local else ''}")
    raise ModelLoadError(
        "FLUX.1's T5 tokenizer is not shipped with loraforge and was found neither in the Hugging Face cache nor "
        "on the hub (" + "; ".join(errors[:2]) + "). Pass a FLUX.1 diffusers folder as model.config_dir (configs "
        "and tokenizers suffice: `huggingface-cli download black-forest-labs/FLUX.1-dev --include '*.json' "
        "'tokenizer*/*'`), or download the tokenizer once while online (`huggingface-cli download "
        "black-forest-labs/FLUX.1-dev --include 'tokenizer_2/*'`)"
    )


def load_flux_pipeline(cfg, path: Path, configs: Path, t5_from_cache: bool, dtype) -> Any:
    """A `FluxPipeline` from a FLUX transformer single file and its component files (`component_parts`), with the
    configs of `configs` (`t5_from_cache`: loraforge's full-size config folder, `flux_tokenizers`)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    parts = component_parts(cfg, path)
    tokenizer, tokenizer_2 = flux_tokenizers(configs, t5_from_cache)
    transformer = load_transformer(path, configs, dtype)
    scheduler_config = FlowMatchEulerDiscreteScheduler.load_config(str(configs), subfolder="scheduler")
    if not transformer.config.guidance_embeds and not cfg.config_dir:  # [schnell]'s fixed shift, as its repo's
        scheduler_config = {**scheduler_config, **FLUX_SCHNELL_OVERRIDES["scheduler"]}
    for field_name, part in parts.items():
        log.info("FLUX.1 %s from %s%s", LABELS[field_name], part.path, f" ({part.prefix}*)" if part.prefix else "")
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(scheduler_config),
        vae=load_vae(parts["ae"], configs, dtype),
        text_encoder=load_text_encoder(parts["clip_l"], configs, "text_encoder", dtype),
        tokenizer=tokenizer,
        text_encoder_2=load_text_encoder(parts["t5xxl"], configs, "text_encoder_2", dtype),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
