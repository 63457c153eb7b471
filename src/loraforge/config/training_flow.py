"""`[training]`'s options of flow-matching families (FLUX.1): the timestep shift, the loss weighting scheme and the
guidance value of [dev]; and `objective_problem`, which refuses the options of one objective on a family of the
other (min-SNR on FLUX, a flow shift on SD), and T5 options on a family without T5, said before anything loads."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..families import Family, family as family_info
from .training_options import LossAndScheduleOptions

# Options of the DDPM objective (SD families) that mean nothing for rectified flow, and why.
DIFFUSION_ONLY = {
    "snr_gamma": "min-SNR-γ weights by the DDPM schedule's SNR; flow matching has no such schedule "
                 "(use training.weighting_scheme = \"sigma_sqrt\" or \"cosmap\")",
    "soft_min_snr": "it is a variant of min-SNR-γ, which needs the DDPM schedule",
    "debiased_estimation_loss": "it weights by the DDPM schedule's SNR (use training.weighting_scheme)",
    "p2_gamma": "P2 weights by the DDPM schedule's SNR (use training.weighting_scheme)",
    "scale_v_pred_loss_like_noise_pred": "FLUX predicts the flow (noise - latents), not v",
    "zero_terminal_snr": "the flow's last step is pure noise already (σ = 1)",
    "noise_offset": "an offset shifts the flow's endpoint off the Gaussian FLUX was trained on (kohya warns against "
                    "it for FLUX too)",
    "multires_noise_iterations": "pyramid noise was made for the DDPM schedule's SNR; the flow's endpoint must stay "
                                 "the Gaussian FLUX was trained on",
    "clip_skip": "FLUX conditions on CLIP's pooled output and T5's last layer, never on a skipped CLIP layer",
}


class FlowOptions(LossAndScheduleOptions):
    """The flow-matching options (after the loss and schedule options of `LossAndScheduleOptions`)."""

    # ---- flow matching (FLUX.1)
    flow_shift: float | None = Field(
        None,
        gt=0,
        description=(
            "Flow matching (FLUX): shift every drawn σ to s·σ/(1 + (s − 1)·σ), more of the noisy steps for s > 1 "
            "(kohya's `--timestep_sampling shift --discrete_flow_shift`; SD3's 3.0). Unset: no shift. Not with "
            "`flow_resolution_shift`."
        ),
    )
    flow_resolution_shift: bool = Field(
        False,
        description=(
            "Flow matching (FLUX): FLUX's resolution-dependent shift, σ' = e^μ/(e^μ + 1/σ − 1) with μ linear in the "
            "image's token count between the scheduler's base_shift (256 tokens) and max_shift (4096 tokens): what "
            "FLUX samples with (kohya's `--timestep_sampling flux_shift`)."
        ),
    )
    weighting_scheme: Literal["none", "sigma_sqrt", "cosmap"] = Field(
        "none",
        description=(
            "Flow matching (FLUX): per-sample loss weight of diffusers' `compute_loss_weighting_for_sd3`: `none` "
            "(the diffusers FLUX scripts' default), `sigma_sqrt` 1/σ², `cosmap` 2/(π(1 − 2σ + 2σ²)). diffusers' "
            "`logit_normal` scheme is `timestep_sampling = \"logit_normal\"` here."
        ),
    )
    guidance_scale: float = Field(
        1.0,
        ge=0,
        description=(
            "FLUX.1 [dev]: the guidance value fed to the transformer's guidance embedding while training (the "
            "diffusers FLUX scripts' `--guidance_scale`, default 1.0; kohya's `--guidance_scale`, default 3.5). "
            "[schnell] has no guidance embedding and ignores it."
        ),
    )

    @model_validator(mode="after")
    def _check_flow_options(self) -> "FlowOptions":
        if self.flow_shift is not None and self.flow_resolution_shift:
            raise ValueError("training.flow_shift and training.flow_resolution_shift both shift the timesteps: keep "
                             "one (flow_resolution_shift: FLUX's own, from the image size; flow_shift: a fixed s)")
        return self


FLOW_ONLY = ("flow_shift", "flow_resolution_shift", "weighting_scheme", "guidance_scale")


def objective_problem(cfg, family: str | Family) -> str | None:
    """The error for options of `cfg` (a `TrainConfig`) that `family` cannot honour: DDPM-only options on a
    flow-matching family (FLUX), flow-only options on a DDPM family, T5 or block options where it has no T5 or no
    swappable blocks; None when they fit."""
    fam = family_info(family)
    tr = cfg.training
    if tr.train_t5_ti and not fam.optional_ti_text_encoders:  # a family fact, known with the family like the rest
        return (f"training.train_t5_ti gives FLUX's T5 encoder the new tokens; {fam.label} has no T5 (pivotal "
                "tuning gives every one of its text encoders the tokens already): remove it")
    if tr.blocks_to_swap and not fam.swap_blocks:
        return (f"training.blocks_to_swap swaps the blocks of FLUX.1's transformer; {fam.label}'s UNet is not "
                "trained that way (it fits with gradient checkpointing and model.quantize_base): remove it")
    fields = type(tr).model_fields
    changed = {f for f in fields if getattr(tr, f) != fields[f].default}
    if fam.is_flow:
        bad = [f for f in DIFFUSION_ONLY if f in changed]
        if bad:
            why = "; ".join(f"training.{f}: {DIFFUSION_ONLY[f]}" for f in bad)
            hint = (f" (preset {cfg.preset!r} sets some: with model.family = \"{fam.name}\" it leaves them out)"
                    if cfg.preset else "")
            return f"{fam.label} trains by flow matching, so these options do not apply: {why}. Remove them{hint}"
        if cfg.model.prediction_type != "auto":
            return (f"model.prediction_type = {cfg.model.prediction_type!r}: {fam.label} predicts the flow "
                    "(noise - latents), not ε or v; leave it \"auto\"")
        if cfg.dataset.max_token_length not in (None, 75):  # 75: CLIP's one window, the default
            return (f"dataset.max_token_length = {cfg.dataset.max_token_length}: {fam.label} reads long prompts with "
                    "T5 (model.max_sequence_length tokens), not CLIP in 75-token chunks; remove it")
        if tr.attention == "eager":
            return (f"training.attention = \"eager\" swaps in the UNet's plain attention processor, which "
                    f"{fam.label}'s joint attention (RoPE, two streams) cannot use: use \"sdpa\"")
        if tr.loss_type in ("huber", "smooth_l1") and tr.huber_schedule == "snr":
            return ("training.huber_schedule = \"snr\" follows the DDPM schedule's SNR, which flow matching has "
                    "not: use \"constant\" or \"exponential\"")
        return None
    bad = [f for f in FLOW_ONLY if f in changed]
    if bad:
        return (f"training.{', training.'.join(bad)} set, but {fam.label} is trained with the DDPM noise schedule: "
                "these are flow-matching options (FLUX); remove them")
    if cfg.model.max_sequence_length is not None:
        return (f"model.max_sequence_length = {cfg.model.max_sequence_length} is the T5 length of FLUX; "
                f"{fam.label} has no T5 (for long prompts: dataset.max_token_length); remove it")
    return None
