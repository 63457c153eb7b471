"""Full-size diffusers configs of SD 1.5, SD 2.1 (768-v) and SDXL base 1.0, written in code, and the
`ModelArchitecture` of an actual model (a tiny or fine-tuned variant described by its own configs).

Why: `from_single_file` needs a diffusers folder (model_index.json, component configs, tokenizers, scheduler; no
weights) to know what the checkpoint is. Without one it downloads the default repository's configs, which fails
offline even with `local_files_only=True`. The values below are those of the official repositories
(stable-diffusion-v1-5, stabilityai/stable-diffusion-2-1, stabilityai/stable-diffusion-xl-base-1.0); the UNet and VAE
ones agree with what diffusers' own `create_*_diffusers_config_from_ldm` derives from the original yaml files (tested).
The same configs build the full-size models on the meta device (tests, the consumer models' weight tables).
`models.configs` writes them out as a config folder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

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


def _model_index(pipeline: str, scheduler: dict, **extra) -> dict[str, Any]:
    return {
        "_class_name": pipeline,
        "scheduler": ["diffusers", scheduler["_class_name"]],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "feature_extractor": [None, None],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "image_encoder": [None, None],
        **extra,
    }


_SD_INDEX = {"safety_checker": [None, None], "requires_safety_checker": False}

# family -> component -> config ("model_index", "scheduler", "unet", "vae", "text_encoder"[, "text_encoder_2"])
COMPONENTS: dict[str, dict[str, dict[str, Any]]] = {
    "sd15": {
        "model_index": _model_index("StableDiffusionPipeline", _SCHEDULERS["sd15"], **_SD_INDEX),
        "scheduler": _SCHEDULERS["sd15"],
        "unet": _UNETS["sd15"],
        "vae": _VAES["sd15"],
        "text_encoder": _CLIP_L,
    },
    "sd2": {
        "model_index": _model_index("StableDiffusionPipeline", _SCHEDULERS["sd2"], **_SD_INDEX),
        "scheduler": _SCHEDULERS["sd2"],
        "unet": _UNETS["sd2"],
        "vae": _VAES["sd2"],
        "text_encoder": _OPEN_CLIP_H,
    },
    "sdxl": {
        "model_index": _model_index(
            "StableDiffusionXLPipeline", _SCHEDULERS["sdxl"],
            text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
            tokenizer_2=["transformers", "CLIPTokenizer"],
            force_zeros_for_empty_prompt=True,
        ),
        "scheduler": _SCHEDULERS["sdxl"],
        "unet": _UNETS["sdxl"],
        "vae": _VAES["sdxl"],
        "text_encoder": _CLIP_L,
        "text_encoder_2": _OPEN_CLIP_BIGG,
    },
}

# FLUX.1 [dev] (black-forest-labs/FLUX.1-dev): a flow-matching transformer (19 double-stream + 38 single-stream
# blocks, RoPE, guidance embedding), a 16-channel VAE without quant convs, CLIP-L (pooled) + T5-XXL (sequence).
_FLUX_TRANSFORMER = {
    "_class_name": "FluxTransformer2DModel",
    "attention_head_dim": 128,
    "axes_dims_rope": [16, 56, 56],
    "guidance_embeds": True,
    "in_channels": 64,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 19,
    "num_single_layers": 38,
    "out_channels": None,
    "patch_size": 1,
    "pooled_projection_dim": 768,
}
_FLUX_VAE = _vae(1024, 0.3611, shift_factor=0.1159, latent_channels=16, force_upcast=True, use_quant_conv=False,
                 use_post_quant_conv=False, mid_block_add_attention=True)
_T5_XXL = {  # google/t5-v1_1-xxl's encoder, as FLUX.1 ships it
    "architectures": ["T5EncoderModel"],
    "model_type": "t5",
    "classifier_dropout": 0.0,
    "d_ff": 10240,
    "d_kv": 64,
    "d_model": 4096,
    "decoder_start_token_id": 0,
    "dense_act_fn": "gelu_new",
    "dropout_rate": 0.1,
    "eos_token_id": 1,
    "feed_forward_proj": "gated-gelu",
    "initializer_factor": 1.0,
    "is_encoder_decoder": True,
    "is_gated_act": True,
    "layer_norm_epsilon": 1e-06,
    "num_decoder_layers": 24,
    "num_heads": 64,
    "num_layers": 24,
    "pad_token_id": 0,
    "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32,
    "tie_word_embeddings": False,
    "vocab_size": 32128,
}
_FLUX_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}
COMPONENTS["flux"] = {
    "model_index": {
        "_class_name": "FluxPipeline",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
    },
    "scheduler": _FLUX_SCHEDULER,
    "transformer": _FLUX_TRANSFORMER,
    "vae": _FLUX_VAE,
    "text_encoder": _CLIP_L,
    "text_encoder_2": _T5_XXL,
}
# FLUX.1 [schnell] differs only here: no guidance embedding, a fixed shift of 1 (timestep-distilled, 1-4 steps).
FLUX_SCHNELL_OVERRIDES = {
    "transformer": {"guidance_embeds": False},
    "scheduler": {"shift": 1.0, "use_dynamic_shifting": False},
}

# Padding token of each tokenizer folder, as in the official repositories.
TOKENIZER_PADS = {
    "sd15": {"tokenizer": "<|endoftext|>"},
    "sd2": {"tokenizer": "!"},
    "sdxl": {"tokenizer": "<|endoftext|>", "tokenizer_2": "!"},
    # FLUX's tokenizer_2 is T5's (SentencePiece), which is not shipped: `models.flux_files` finds it
    "flux": {"tokenizer": "<|endoftext|>"},
}


def _strip_private(config: dict) -> dict:
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


@dataclass(frozen=True)
class ModelArchitecture:
    """An actual model's architecture: its family, diffusers UNet config and text-encoder configs (in order; empty:
    the family's full-size text encoders). Two descriptions with the same configs are equal (compared by `digest`),
    so it can key a cache. Build one with `ModelArchitecture.of`."""

    family: str
    digest: str
    unet_config: dict = field(compare=False, hash=False, repr=False)
    text_encoder_configs: tuple = field(compare=False, hash=False, repr=False)

    @classmethod
    def of(cls, family: str, unet_config: dict, text_encoder_configs: list[dict] | None = None) -> "ModelArchitecture":
        unet = _strip_private(unet_config)
        tes = tuple(_strip_private(c) for c in (text_encoder_configs or []))
        blob = json.dumps([family, unet, list(tes)], sort_keys=True, default=str)
        return cls(family, hashlib.sha1(blob.encode()).hexdigest()[:12], unet, tes)

    def __str__(self) -> str:
        return f"{self.family} model {self.digest}"
