"""`[sampling]`: images generated with the LoRA during and after training."""

from __future__ import annotations

from pydantic import Field, field_validator

from .base import Section
from .samplers import normalize_sampler
from .training import MAX_SEED


class SamplingConfig(Section):
    validation_prompts: list[str] = Field(
        default_factory=list,
        description=(
            "Prompts sampled during and after training (`TOK` replaced by the new tokens with pivotal tuning). "
            "Empty (and no `validation_prompt`, no `sample_prompts`): the instance prompt, else the first caption."
        ),
    )
    validation_prompt: str | None = Field(
        None, description="One prompt (diffusers' `--validation_prompt`); sampled before `validation_prompts`."
    )
    sample_prompts: str | None = Field(
        None,
        description=(
            "A prompt file in kohya's syntax: one prompt a line, `#` comments, options `--n` negative, `--w`, `--h`, "
            "`--d` seed, `--l` CFG, `--s` steps, `--ss` sampler."
        ),
    )
    negative_prompt: str = Field("", description="Negative prompt for every sample.")
    num_images_per_prompt: int = Field(2, ge=1, description="Images per prompt (seeds `seed`, `seed+1`, ...).")
    num_inference_steps: int | None = Field(
        None, ge=1, description="Denoising steps; unset: the model's (25 for SD, 28 for FLUX.1 [dev], 4 for [schnell])."
    )
    guidance_scale: float | None = Field(
        None, ge=0,
        description=("Guidance scale (kohya `--l`); unset: the model's (classifier-free guidance 7 for SD, the "
                     "distilled guidance 3.5 for FLUX.1 [dev]; [schnell] ignores it)."),
    )
    width: int | None = Field(
        None, ge=64, description="Sample width, a multiple of 8; unset: the training resolution."
    )
    height: int | None = Field(
        None, ge=64, description="Sample height, a multiple of 8; unset: the training resolution."
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the first sample image (0 to 2³² − 1).")
    sample_sampler: str = Field(
        "euler_a",
        description=(
            "Sampler by kohya name: ddim, pndm, lms, euler, euler_a, heun, dpm_2, dpm_2_a, dpmsolver, dpmsolver++, "
            "dpmsingle, k_lms, k_euler, k_euler_a, k_dpm_2, k_dpm_2_a (k_ = Karras sigmas)."
        ),
    )
    sample_every_n_steps: int | None = Field(
        None, ge=1, description="Also sample every N steps during training (files `samples/<step>_<n>.png`)."
    )
    sample_every_n_epochs: int | None = Field(
        None, ge=1, description="Also sample at the end of every N epochs (files `samples/e<epoch>_<n>.png`)."
    )
    sample_batch_size: int = Field(
        4, ge=1, description="Images generated at once (class images for prior preservation)."
    )
    at_end: bool = Field(True, description="Sample the validation prompts once training has finished.")

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, v: int | None, info) -> int | None:
        if v is not None and v % 8:
            lower, upper = max(64, v // 8 * 8), v // 8 * 8 + 8
            raise ValueError(f"{v} is not a multiple of 8; the VAE needs one (try {lower} or {upper})")
        return v

    @field_validator("sample_sampler")
    @classmethod
    def _known_sampler(cls, v: str) -> str:
        return normalize_sampler(v)
