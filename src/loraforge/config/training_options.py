"""`[training]`'s loss and noise options, masked loss, text-encoder schedule, EMA and validation loss: the part of
`TrainingConfig` (training.py) that names what a step optimises and what is measured beside it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import Section

MAX_SEED = 2**32 - 1  # numpy (seeded by accelerate) takes 0 .. 2³² − 1


class LossAndScheduleOptions(Section):
    # ---- loss and noise
    snr_gamma: float | None = Field(
        None,
        gt=0,
        description=(
            "Min-SNR-γ loss weighting (5.0 recommended). Each sample's loss is multiplied by min(SNR, γ)/SNR for "
            "epsilon prediction and min(SNR, γ)/(SNR + 1) for v-prediction (the paper's form), SNR = ᾱ/(1 − ᾱ) at its "
            "timestep; applied to prior-preservation samples too."
        ),
    )
    noise_offset: float | None = Field(
        None, ge=0, description="Add offset × N(0, 1) per image and channel to the noise (helps very dark/light images; 0.05-0.1)."
    )
    multires_noise_iterations: int | None = Field(
        None, ge=1, description="Pyramid (multi-resolution) noise levels (6-10 recommended)."
    )
    multires_noise_discount: float = Field(
        0.3, gt=0, le=1, description="Strength decay per pyramid level (the LyCORIS guide uses 0.1)."
    )
    soft_min_snr: bool = Field(
        False,
        description=(
            "With `snr_gamma`: the smooth minimum SNR·γ/(SNR + γ) in place of min(SNR, γ) (the soft min-SNR "
            "variant: no kink at SNR = γ)."
        ),
    )
    loss_type: Literal["l2", "l1", "huber", "smooth_l1"] = Field(
        "l2",
        description=(
            "The element loss between prediction and target (kohya's `--loss_type`): `l2` squared error (the "
            "usual), `l1` absolute error, `huber` the pseudo-Huber loss 2δ(√(e² + δ²) − δ) (L2 near zero, L1 far "
            "out: robust to outliers), `smooth_l1` the same divided by δ. δ follows `huber_schedule`."
        ),
    )
    huber_c: float = Field(
        0.1,
        gt=0,
        description=(
            "δ of the Huber losses (kohya's `--huber_c`): the constant δ, the end value of the `exponential` "
            "schedule, the floor of the `snr` one. Only with `loss_type = \"huber\"` or `\"smooth_l1\"`."
        ),
    )
    huber_schedule: Literal["snr", "exponential", "constant"] = Field(
        "snr",
        description=(
            "How δ changes with the timestep (kohya's `--huber_schedule`): `snr` (1 − c)/(1 + σ_t)² + c with "
            "σ_t = √((1 − ᾱ)/ᾱ), near 1 (L2-like) for clean steps and c for noisy ones; `exponential` "
            "exp(−t·ln(1/c)/T)·scale, 1 at t = 0 down to c at t = T; `constant` c·scale."
        ),
    )
    huber_scale: float = Field(
        1.0, gt=0, description="Multiplies δ of the `exponential` and `constant` schedules (kohya's `--huber_scale`)."
    )
    debiased_estimation_loss: bool = Field(
        False,
        description=(
            "Debiased estimation (kohya's `--debiased_estimation_loss`, Yu et al. 2024): weight each sample's loss "
            "by 1/√SNR (ε-prediction) or 1/(SNR + 1) (v-prediction), SNR capped at 1000; multiplies with the other "
            "weightings."
        ),
    )
    p2_gamma: float | None = Field(
        None,
        gt=0,
        description=(
            "P2 weighting (Choi et al. 2022; OneTrainer's `loss_weight_fn = P2` with `loss_weight_strength` γ): "
            "weight each sample's loss by 1/(1 + SNR)^γ (γ = 1 in the paper), which favours the noisier steps."
        ),
    )
    scale_v_pred_loss_like_noise_pred: bool = Field(
        False,
        description=(
            "v-prediction only (kohya's `--scale_v_pred_loss_like_noise_pred`): weight the loss by SNR/(SNR + 1), "
            "giving the timesteps the weights the ε-prediction loss has."
        ),
    )
    ip_noise_gamma: float | None = Field(
        None,
        ge=0,
        description=(
            "Input perturbation (Ning et al. 2023; kohya's `--ip_noise_gamma`): the noisy latents are made with "
            "noise + γ · N(0, 1) while the target keeps the plain noise; 0.1 recommended."
        ),
    )
    ip_noise_gamma_random_strength: bool = Field(
        False,
        description="With `ip_noise_gamma`: each sample's γ is scaled by u ~ U(0, 1) (kohya's option of this name).",
    )
    zero_terminal_snr: bool = Field(
        False,
        description=(
            "Rescale the noise schedule so its last timestep is pure noise (SNR 0; Lin et al. 2024; kohya's "
            "`--zero_terminal_snr`, diffusers' `rescale_betas_zero_snr`): lets the model learn very dark and light "
            "images. Needs a v-prediction model (`model.prediction_type`): an ε-prediction model cannot predict "
            "the noise from pure noise. Sample the result with trailing timesteps and the rescaled schedule."
        ),
    )
    min_timestep: int | None = Field(
        None, ge=0, description="Draw timesteps from `min_timestep` on (kohya's `--min_timestep`; default 0)."
    )
    max_timestep: int | None = Field(
        None,
        ge=1,
        le=1000,
        description=(
            "Draw timesteps below `max_timestep` (exclusive, kohya's `--max_timestep`; default the schedule's "
            "1000). E.g. 0-500 for detail, 500-1000 for composition."
        ),
    )
    timestep_sampling: Literal["uniform", "logit_normal", "sigmoid", "beta"] = Field(
        "uniform",
        description=(
            "How timesteps are drawn in [min_timestep, max_timestep): `uniform` (kohya's and diffusers' SD "
            "default); `logit_normal` sigmoid(N(logit_mean, logit_std)) (SD3's `weighting_scheme = logit_normal`, "
            "more middle steps); `sigmoid` sigmoid(sigmoid_scale · N(0, 1)) (kohya's FLUX/SD3 `--timestep_sampling "
            "sigmoid`); `beta` Beta(timestep_beta_alpha, timestep_beta_beta)."
        ),
    )
    logit_mean: float = Field(0.0, description="Mean of `timestep_sampling = \"logit_normal\"` (SD3's `--logit_mean`).")
    logit_std: float = Field(
        1.0, gt=0, description="Standard deviation of `timestep_sampling = \"logit_normal\"` (SD3's `--logit_std`)."
    )
    sigmoid_scale: float = Field(
        1.0, gt=0, description="Scale of `timestep_sampling = \"sigmoid\"` (kohya's `--sigmoid_scale`)."
    )
    timestep_beta_alpha: float = Field(2.0, gt=0, description="α of `timestep_sampling = \"beta\"`.")
    timestep_beta_beta: float = Field(
        2.0, gt=0, description="β of `timestep_sampling = \"beta\"` (α = β = 2: more middle steps, fewer extremes)."
    )
    # ---- masked loss
    masked_loss: bool = Field(
        False,
        description=(
            "Weight the loss by a mask per image (`dataset.alpha_mask` or `dataset.mask_dir`), scaled down to the "
            "latents: only the masked area trains (kohya's `--masked_loss`; OneTrainer's masked training). kohya "
            "multiplies the loss by the mask and averages over the whole image (the default here); OneTrainer "
            "also gives the background `unmasked_weight` and can average over the masked area "
            "(`normalize_masked_area_loss`). Regularisation / class images stay unmasked unless "
            "`masked_loss_reg_images`."
        ),
    )
    unmasked_weight: float = Field(
        0.0,
        ge=0,
        le=1,
        description=(
            "With `masked_loss`: the loss weight of the unmasked background (OneTrainer's `unmasked_weight`, its "
            "default 0.1; kohya's is 0): weight = unmasked_weight + (1 − unmasked_weight) × mask."
        ),
    )
    normalize_masked_area_loss: bool = Field(
        False,
        description=(
            "With `masked_loss`: divide each sample's loss by its mean weight, so a small mask trains as strongly "
            "as a large one (OneTrainer's `normalize_masked_area_loss`)."
        ),
    )
    masked_loss_reg_images: bool = Field(
        False, description="With `masked_loss`: mask the regularisation / class images too (their masks from the same source)."
    )
    # ---- text-encoder schedule
    stop_text_encoder_training: int | None = Field(
        None,
        ge=0,
        description=(
            "With `network.train_text_encoder`: the text-encoder LoRA trains for the first N steps only, then the "
            "UNet LoRA goes on alone (kohya's `--stop_text_encoder_training` of train_db.py). The seed guides stop "
            "it early because the text encoder overfits sooner. Pivotal tuning's embeddings have their own stop "
            "(`train_text_encoder_ti_frac`, `ti_steps`)."
        ),
    )
    train_text_encoder_frac: float | None = Field(
        None,
        gt=0,
        le=1,
        description=(
            "With `network.train_text_encoder`: the text-encoder LoRA trains for this fraction of the steps "
            "(diffusers' advanced scripts' `--train_text_encoder_frac`); not with `stop_text_encoder_training`."
        ),
    )
    alternate_text_encoder_unet_every: int | None = Field(
        None,
        ge=1,
        description=(
            "With `network.train_text_encoder`: alternate phases of N steps, the text-encoder LoRA alone first, then "
            "the UNet LoRA alone, and so on (until a text-encoder stop, after which the UNet LoRA trains alone); one "
            "learning-rate schedule spans them."
        ),
    )
    # ---- EMA
    use_ema: bool = Field(
        False,
        description=(
            "Keep an exponential moving average of the trained weights (LoRA and new token embeddings; "
            "OneTrainer's `ema`, SimpleTuner's `--use_ema`), saved as `<output_name>-ema.safetensors` beside the "
            "LoRA (and `<output_name>-ema_emb.safetensors` for the embeddings); its state is in every checkpoint, "
            "so a resume continues it exactly."
        ),
    )
    ema_decay: float = Field(
        0.999,
        gt=0,
        lt=1,
        description=(
            "EMA decay d (OneTrainer's `ema_decay`, SimpleTuner's `--ema_decay`): shadow ← d·shadow + (1 − d)·weight "
            "at each update. Its memory is about 1/(1 − d) updates: 0.999 for long runs, 0.99 or less for a few "
            "hundred steps."
        ),
    )
    ema_warmup: bool = Field(
        True,
        description=(
            "Use min(ema_decay, (1 + n)/(10 + n)) at the n-th update, so the average does not hold on to the "
            "starting weights (diffusers' and OneTrainer's warm-up)."
        ),
    )
    ema_update_interval: int = Field(
        1,
        ge=1,
        description=(
            "Update the EMA every N optimizer steps (OneTrainer's `ema_update_step_interval`, SimpleTuner's "
            "`--ema_update_interval`)."
        ),
    )
    ema_device: Literal["gpu", "cpu"] = Field(
        "gpu",
        description=(
            "Where the EMA copy lives: `gpu` (the training device; fastest) or `cpu` (saves its memory on the GPU; "
            "OneTrainer's `ema = CPU`, SimpleTuner's `--ema_device cpu`)."
        ),
    )
    ema_sampling: bool = Field(
        False,
        description="Sample with the EMA weights (during and after training) instead of the trained ones.",
    )
    # ---- validation loss
    validation_data_dir: str | None = Field(
        None,
        description=(
            "Validation loss on held-out images: a folder of images with captions beside them (as "
            "`dataset.train_data_dir`, same `caption_extension`; uncaptioned ones get `dataset.instance_prompt`), "
            "never trained on. The loss is the training loss at fixed timesteps with fixed noise, so its curve "
            "compares across steps and runs (OneTrainer's validation concept, SimpleTuner's eval dataset)."
        ),
    )
    validation_split: float | None = Field(
        None,
        gt=0,
        lt=1,
        description=(
            "Hold out this fraction of the training images (not of the regularisation images) for the validation "
            "loss, chosen with `validation_seed` (kohya's `validation_split`); at least one image each side."
        ),
    )
    validation_use_reg_images: bool = Field(
        False,
        description=(
            "Also compute the validation loss on the regularisation / class images (they keep training too): how "
            "far the model drifts from its prior."
        ),
    )
    validation_seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="Seed of the held-out split and of the fixed validation noise (kohya's `validation_seed`; default `seed`).",
    )
    validate_every_n_steps: int | None = Field(
        None, ge=1, description="Compute the validation loss every N steps (kohya's `validate_every_n_steps`)."
    )
    validate_every_n_epochs: int | None = Field(
        None, ge=1, description="Compute the validation loss every N epochs (kohya's `validate_every_n_epochs`)."
    )
    validation_timesteps: int = Field(
        4,
        ge=1,
        le=50,
        description=(
            "Fixed timesteps each held-out image is scored at, evenly spaced in [min_timestep, max_timestep) "
            "(kohya's 4: 200, 400, 600, 800); the validation loss is their mean."
        ),
    )
    keep_best_validation: bool = Field(
        False,
        description=(
            "Keep the LoRA files of the lowest validation loss so far in `<run folder>/best/` "
            "(`<output_name>-best.safetensors`); its step is logged, and the lowest loss is kept in the checkpoints "
            "so a resumed run goes on comparing with it."
        ),
    )

    def prediction_problem(self, prediction_type: str) -> str | None:
        """The error for options that need a v-prediction model when the model predicts `prediction_type`."""
        if prediction_type == "v_prediction":
            return None
        need = [f for f in ("zero_terminal_snr", "scale_v_pred_loss_like_noise_pred") if getattr(self, f)]
        if not need:
            return None
        return (f"training.{', training.'.join(need)} needs a v-prediction model, but the model predicts "
                f"{prediction_type} (model.prediction_type): with ε-prediction the last, pure-noise step has "
                "nothing to predict from. Use a v-prediction model (SD 2.x 768, or set model.prediction_type = "
                "\"v_prediction\" for one trained so), or remove them")

    @model_validator(mode="after")
    def _check_loss_options(self) -> "LossAndScheduleOptions":
        # changed from its default (a dumped config writes every default, so "given" would not do)
        fields = type(self).model_fields
        given = {f for f in fields if getattr(self, f) != fields[f].default}
        huber = [f for f in ("huber_c", "huber_schedule", "huber_scale") if f in given]
        if huber and self.loss_type not in ("huber", "smooth_l1"):
            raise ValueError(f"training.{', training.'.join(huber)} set, but training.loss_type = "
                             f"{self.loss_type!r} uses no Huber threshold: set loss_type = \"huber\" (or "
                             "\"smooth_l1\"), or remove them")
        if self.soft_min_snr and not self.snr_gamma:
            raise ValueError("training.soft_min_snr = true needs training.snr_gamma (the γ of the soft minimum): "
                             "set snr_gamma (5.0 recommended) or remove soft_min_snr")
        if self.ip_noise_gamma_random_strength and not self.ip_noise_gamma:
            raise ValueError("training.ip_noise_gamma_random_strength = true needs training.ip_noise_gamma (the "
                             "largest strength): set ip_noise_gamma (0.1 recommended) or remove it")
        low, high = self.min_timestep or 0, self.max_timestep
        if high is not None and low >= high:
            raise ValueError(f"training.min_timestep = {low} is not below training.max_timestep = {high} (the "
                             "maximum is exclusive): no timestep is left to draw; make min_timestep smaller or "
                             "max_timestep larger")
        if self.min_timestep is not None and self.min_timestep >= 1000:
            raise ValueError(f"training.min_timestep = {self.min_timestep}: the schedules have 1000 timesteps "
                             "(0-999); give a value below 1000")
        sources = [f for f in ("validation_data_dir", "validation_split") if getattr(self, f)]
        if self.validation_use_reg_images:
            sources.append("validation_use_reg_images")
        every = [f for f in ("validate_every_n_steps", "validate_every_n_epochs") if getattr(self, f)]
        if sources and not every:
            raise ValueError(f"training.{sources[0]} gives validation images but no schedule: set "
                             "training.validate_every_n_steps (or validate_every_n_epochs)")
        if (every or self.keep_best_validation) and not sources:
            what = every[0] if every else "keep_best_validation"
            raise ValueError(f"training.{what} set, but there are no validation images: set "
                             "training.validation_data_dir (a folder), training.validation_split (a fraction of "
                             "the training images) or training.validation_use_reg_images = true")
        ema = [f for f in ("ema_decay", "ema_warmup", "ema_update_interval", "ema_device", "ema_sampling")
               if f in given]
        if ema and not self.use_ema:
            raise ValueError(f"training.{', training.'.join(ema)} set, but training.use_ema is off: turn it on "
                             "(use_ema = true) or remove them")
        if self.stop_text_encoder_training is not None and self.train_text_encoder_frac is not None:
            raise ValueError("training.stop_text_encoder_training and training.train_text_encoder_frac both say when "
                             "the text encoder stops: keep one")
        masks = [f for f in ("unmasked_weight", "normalize_masked_area_loss", "masked_loss_reg_images") if f in given]
        if masks and not self.masked_loss:
            raise ValueError(f"training.{', training.'.join(masks)} set, but training.masked_loss is off: turn it on "
                             "or remove them")
        owners = {"logit_mean": "logit_normal", "logit_std": "logit_normal", "sigmoid_scale": "sigmoid",
                  "timestep_beta_alpha": "beta", "timestep_beta_beta": "beta"}
        stray = [f for f, kind in owners.items() if f in given and self.timestep_sampling != kind]
        if stray:
            raise ValueError(f"training.{', training.'.join(stray)} set, but training.timestep_sampling = "
                             f"{self.timestep_sampling!r} does not use them: set timestep_sampling to "
                             f"{owners[stray[0]]!r}, or remove them")
        return self
