"""`[model]`: which Stable Diffusion to fine-tune."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..families import FAMILY_NAMES
from .base import Section

Family = Literal[("auto", *FAMILY_NAMES)]  # the registry's families


class ModelConfig(Section):
    pretrained_model_name_or_path: str | None = Field(
        None,
        description=(
            "The base model: a hub id (`stabilityai/stable-diffusion-xl-base-1.0`), a local diffusers folder, or a "
            "single `.safetensors` / `.ckpt` file in the original (A1111/ComfyUI) layout. Unset: the embedded tiny "
            "model of `family` (real architecture, random weights) that loraforge builds and caches, for trying things."
        ),
    )
    family: Family = Field(
        "auto",
        description=(
            "`sd15`, `sd2`, `sdxl` or `flux` (FLUX.1 [dev] and [schnell]). `auto` detects it from the model (and "
            "means `sd15` for the embedded model)."
        ),
    )
    prediction_type: Literal["auto", "epsilon", "v_prediction"] = Field(
        "auto",
        description=(
            "What the UNet predicts. `auto` reads the model's scheduler config (SD 2.x 768 models are `v_prediction`). "
            "Same as kohya's `--v_parameterization`."
        ),
    )
    max_sequence_length: int | None = Field(
        None,
        ge=8,
        le=512,
        description=(
            "FLUX: how many T5 tokens a prompt is padded or cut to, in training and sampling (the diffusers FLUX "
            "scripts' `--max_sequence_length`, kohya's `--t5xxl_max_token_length`). Unset: 512 for [dev], 256 for "
            "[schnell], as FLUX was trained."
        ),
    )
    vae: str | None = Field(
        None,
        description="A replacement VAE: a diffusers folder, hub id or single file (e.g. `madebyollin/sdxl-vae-fp16-fix`).",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of the model.")
    variant: str | None = Field(None, description="Hub weight variant, e.g. `fp16`.")
    config_dir: str | None = Field(
        None,
        description=(
            "For a single-file model: a local diffusers folder whose configs and tokenizers describe it. Unset: "
            "loraforge writes one for the detected family, so no hub access is needed."
        ),
    )
    allow_pickle: bool = Field(
        False,
        description=(
            "Allow loading pickle-based files (`.ckpt`, `.pt`, `.bin`). Off by default because unpickling can run "
            "code; when on, loraforge still loads with `weights_only=True`."
        ),
    )
    quantize_base: Literal["none", "int8", "fp8"] = Field(
        "none",
        description=(
            "Store the frozen UNet's linear layers quantized with torchao before the LoRA is added (needs the torchao "
            "package; `network.algo = \"lora\"` only): `int8` (int8 weight-only, any device: about half the bf16 "
            "weights' memory, each layer dequantized as it runs), `fp8` (float8 weight-only: a CUDA GPU of compute "
            "capability 8.9 or newer, e.g. L4, L40S, H100, H200). The LoRA trains in full precision and its file is "
            "the same; the text encoders and the convolutions stay unquantized. See docs/benchmarks.md."
        ),
    )
