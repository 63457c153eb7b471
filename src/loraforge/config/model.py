"""`[model]`: which Stable Diffusion to fine-tune."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..families import FAMILY_NAMES
from .base import Section

Family = Literal[("auto", *FAMILY_NAMES)]  # the registry's families

# FLUX.1 component files next to a transformer single file, named as kohya sd-scripts' FLUX flags (--clip_l ...)
FLUX_FILE_FIELDS = ("clip_l", "t5xxl", "ae")


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
            "For a single-file model: a local diffusers folder whose configs and tokenizers describe it (for FLUX "
            "files: its transformer, VAE and text-encoder configs and its CLIP and T5 tokenizers; a FLUX.1 diffusers "
            "folder without weights will do). Unset: loraforge writes one for the detected family, so no hub access "
            "is needed (FLUX's T5 tokenizer excepted: it is read from the Hugging Face cache)."
        ),
    )
    clip_l: str | None = Field(
        None,
        description=(
            "FLUX.1 from single files: the CLIP-L text encoder file (`clip_l.safetensors`, the transformers "
            "`CLIPTextModel` weights as ComfyUI and kohya keep them), used when `pretrained_model_name_or_path` is a "
            "FLUX transformer file (`flux1-dev.safetensors`). kohya's `--clip_l`. Unset: read from the model file when "
            "it is an all-in-one checkpoint that holds it (`text_encoders.clip_l.`), else an error."
        ),
    )
    t5xxl: str | None = Field(
        None,
        description=(
            "FLUX.1 from single files: the T5-XXL text encoder file (`t5xxl_fp16.safetensors`, or "
            "`t5xxl_fp8_e4m3fn.safetensors`: float8 weights are upcast to the load precision as they are read). "
            "kohya's `--t5xxl`. Unset: read from an all-in-one model file (`text_encoders.t5xxl.`), else an error. "
            "The T5 tokenizer comes from `config_dir`, else from the Hugging Face cache (FLUX.1's `tokenizer_2`)."
        ),
    )
    ae: str | None = Field(
        None,
        description=(
            "FLUX.1 from single files: the autoencoder file (`ae.safetensors` of black-forest-labs/FLUX.1-dev, the "
            "original layout `encoder.down.0.block.0...`; a diffusers-layout VAE file also loads). kohya's `--ae`. "
            "Unset: read from an all-in-one model file (`vae.`), else an error."
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

    @model_validator(mode="after")
    def _flux_files(self) -> "ModelConfig":
        given = [f"model.{f}" for f in FLUX_FILE_FIELDS if getattr(self, f)]
        if given and self.pretrained_model_name_or_path is None:
            raise ValueError(f"{', '.join(given)}: component files of a FLUX.1 single file; set "
                             "model.pretrained_model_name_or_path to the transformer file (flux1-dev.safetensors)")
        if given and self.family not in ("auto", "flux"):
            raise ValueError(f"{', '.join(given)}: component files of a FLUX.1 single file, but model.family = "
                             f"{self.family!r}; remove them (for another VAE: model.vae)")
        return self

    @property
    def flux_files(self) -> dict[str, str]:
        """The FLUX component files given: field name -> path."""
        return {f: getattr(self, f) for f in FLUX_FILE_FIELDS if getattr(self, f)}
