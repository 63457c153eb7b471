"""Full-size diffusers configs of SD 1.5, SD 2.1 (768-v) and SDXL base 1.0, written in code.

Why: `from_single_file` needs a diffusers folder (model_index.json, component configs, tokenizers, scheduler; no
weights) to know what the checkpoint is. Without one it downloads the default repository's configs, which fails
offline even with `local_files_only=True`. The values below are those of the official repositories
(stable-diffusion-v1-5, stabilityai/stable-diffusion-2-1, stabilityai/stable-diffusion-xl-base-1.0); the UNet and VAE
ones agree with what diffusers' own `create_*_diffusers_config_from_ldm` derives from the original yaml files (tested).
`full_size_config` also lets tests build the full-size models on the meta device.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from ..utils.files import atomic_dir, cache_home

CONFIG_VERSION = 1  # bump when the values below change, so cached folders are rewritten
FAMILIES = ("sd15", "sd2", "sdxl")

_SD_BLOCKS = {
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

_UNET_COMMON = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "center_input_sample": False,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "dual_cross_attention": False,
}

_UNETS: dict[str, dict[str, Any]] = {
    "sd15": {
        **_UNET_COMMON,
        **_SD_BLOCKS,
        "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "cross_attention_dim": 768,
        "sample_size": 64,
        "use_linear_projection": False,
        "upcast_attention": False,
    },
    "sd2": {
        **_UNET_COMMON,
        **_SD_BLOCKS,
        "attention_head_dim": [5, 10, 20, 20],
        "block_out_channels": [320, 640, 1280, 1280],
        "cross_attention_dim": 1024,
        "sample_size": 96,
        "use_linear_projection": True,
        "upcast_attention": True,  # SD 2.1 (2.0 had False); fp16 attention overflows without it
    },
    "sdxl": {
        **_UNET_COMMON,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256,
        "attention_head_dim": [5, 10, 20],
        "block_out_channels": [320, 640, 1280],
        "cross_attention_dim": 2048,
        "projection_class_embeddings_input_dim": 2816,  # 6 time ids x 256 + pooled bigG 1280
        "sample_size": 128,
        "transformer_layers_per_block": [1, 2, 10],
        "use_linear_projection": True,
        "upcast_attention": None,
    },
}


def _vae(sample_size: int, scaling_factor: float = 0.18215, **extra) -> dict[str, Any]:
    return {
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "sample_size": sample_size,
        "scaling_factor": scaling_factor,
        **extra,
    }


_VAES = {
    "sd15": _vae(512),
    "sd2": _vae(768),
    "sdxl": _vae(1024, 0.13025, force_upcast=True),
}


def _clip(architecture: str, hidden: int, layers: int, heads: int, act: str, projection: int) -> dict[str, Any]:
    # bos 0 / eos 2 are the (historical) values of the official configs: with eos_token_id == 2 transformers pools at
    # the argmax of the ids, which is the real eos 49407.
    return {
        "architectures": [architecture],
        "model_type": "clip_text_model",
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
        "hidden_act": act,
        "hidden_size": hidden,
        "intermediate_size": hidden * 4,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "projection_dim": projection,
        "vocab_size": 49408,
    }


_CLIP_L = _clip("CLIPTextModel", 768, 12, 12, "quick_gelu", 768)
# OpenCLIP ViT-H/14 text tower as SD 2 uses it: 24 layers, of which the penultimate output is used -> 23 here.
_OPEN_CLIP_H = _clip("CLIPTextModel", 1024, 23, 16, "gelu", 512)
_OPEN_CLIP_BIGG = _clip("CLIPTextModelWithProjection", 1280, 32, 20, "gelu", 1280)

_SCHEDULER_COMMON = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

_SCHEDULERS = {
    "sd15": {"_class_name": "PNDMScheduler", **_SCHEDULER_COMMON, "prediction_type": "epsilon"},
    "sd2": {"_class_name": "DDIMScheduler", **_SCHEDULER_COMMON, "prediction_type": "v_prediction"},
    "sdxl": {
        "_class_name": "EulerDiscreteScheduler",
        **_SCHEDULER_COMMON,
        "interpolation_type": "linear",
        "prediction_type": "epsilon",
        "sample_max_value": 1.0,
        "timestep_spacing": "leading",
        "use_karras_sigmas": False,
    },
}


def _model_index(family: str) -> dict[str, Any]:
    scheduler = ["diffusers", _SCHEDULERS[family]["_class_name"]]
    common = {
        "scheduler": scheduler,
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "feature_extractor": [None, None],
        "text_encoder": ["transformers", "CLIPTextModel"],
    }
    if family == "sdxl":
        return {
            "_class_name": "StableDiffusionXLPipeline",
            **common,
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "image_encoder": [None, None],
            "force_zeros_for_empty_prompt": True,
        }
    return {
        "_class_name": "StableDiffusionPipeline",
        **common,
        "safety_checker": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
    }


# Padding token of each tokenizer folder, as in the official repositories.
_TOKENIZERS = {
    "sd15": {"tokenizer": "<|endoftext|>"},
    "sd2": {"tokenizer": "!"},
    "sdxl": {"tokenizer": "<|endoftext|>", "tokenizer_2": "!"},
}


def _components(family: str) -> dict[str, dict[str, Any]]:
    comps = {
        "model_index": _model_index(family),
        "scheduler": _SCHEDULERS[family],
        "unet": _UNETS[family],
        "vae": _VAES[family],
        "text_encoder": {"sd15": _CLIP_L, "sd2": _OPEN_CLIP_H, "sdxl": _CLIP_L}[family],
    }
    if family == "sdxl":
        comps["text_encoder_2"] = _OPEN_CLIP_BIGG
    return comps


def _check(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {list(FAMILIES)}")


def full_size_config(family: str, component: str) -> dict[str, Any]:
    """A copy of the full-size config of `component` ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler",
    "model_index") of `family`. UNet/VAE/scheduler dicts feed `Class.from_config`; text-encoder dicts feed
    `CLIPTextConfig.from_dict`."""
    _check(family)
    comps = _components(family)
    if component not in comps:
        raise ValueError(f"{family} has no component {component!r}; choose one of {sorted(comps)}")
    return copy.deepcopy(comps[component])


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_config_folder(family: str, folder) -> Path:
    """Write the config-only diffusers folder of `family` (no weights) into `folder`."""
    from .tokenizer import clip_tokenizer

    _check(family)
    folder = Path(folder)
    for name, data in _components(family).items():
        if name == "model_index":
            _write_json(folder / "model_index.json", data)
        elif name == "scheduler":
            _write_json(folder / "scheduler" / "scheduler_config.json", data)
        else:
            _write_json(folder / name / "config.json", data)
    for name, pad in _TOKENIZERS[family].items():
        clip_tokenizer(pad_token=pad).save_pretrained(str(folder / name))
    return folder


def config_folder(family: str) -> Path:
    """The config-only folder of `family` under `cache_home()/configs/<family>-v<N>`, written once, atomically."""
    _check(family)
    folder = cache_home() / "configs" / f"{family}-v{CONFIG_VERSION}"
    if (folder / "model_index.json").is_file():
        return folder
    with atomic_dir(folder) as tmp:
        write_config_folder(family, tmp)
    return folder
