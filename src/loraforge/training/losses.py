"""The denoising objective and its variants: targets, the element loss (L2, L1, Huber, smooth L1), the per-timestep
weights (min-SNR-γ and its soft variant, debiased estimation, P2, v-prediction scaled like noise prediction), noise
offset, pyramid noise."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def diffusion_target(noise_scheduler, latents, noise, timesteps, prediction_type: str) -> torch.Tensor:
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction type {prediction_type!r}")


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample, in fp32 (shape [B])."""
    return F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=list(range(1, pred.ndim)))


def element_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str = "l2",
                 huber_c: torch.Tensor | None = None) -> torch.Tensor:
    """The element loss of `training.loss_type`, in fp32 (the shape of `pred`). `l2`: squared error; `l1`: absolute
    error; `huber`: the pseudo-Huber 2δ(√(e² + δ²) − δ) (quadratic e² near 0, linear 2δ|e| far out); `smooth_l1`:
    2(√(e² + δ²) − δ), the same curve divided by δ. δ (`huber_c`, shape [B]) is per sample (`huber_threshold`).
    kohya's `conditional_loss`."""
    pred, target = pred.float(), target.float()
    if loss_type == "l2":
        return F.mse_loss(pred, target, reduction="none")
    if loss_type == "l1":
        return F.l1_loss(pred, target, reduction="none")
    if huber_c is None:
        raise ValueError(f"loss_type {loss_type!r} needs a Huber threshold")
    c = huber_c.float().to(pred.device).view(-1, *([1] * (pred.ndim - 1)))
    root = torch.sqrt((pred - target) ** 2 + c**2) - c
    if loss_type == "huber":
        return 2 * c * root
    if loss_type == "smooth_l1":
        return 2 * root
    raise ValueError(f"unsupported loss type {loss_type!r}")


def per_sample_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str = "l2",
                    huber_c: torch.Tensor | None = None, weight_map: torch.Tensor | None = None,
                    normalize: bool = False) -> torch.Tensor:
    """`element_loss` averaged per sample (shape [B]). `weight_map` ([B, 1, h, w], `mask_weights`) weights each
    latent pixel first (masked loss); with `normalize` each sample's loss is then divided by its mean weight."""
    loss = element_loss(pred, target, loss_type, huber_c)
    dims = list(range(1, pred.ndim))
    if weight_map is None:
        return loss.mean(dim=dims)
    w = weight_map.float().to(loss.device)
    out = (loss * w).mean(dim=dims)
    if normalize:
        out = out / w.expand_as(loss).mean(dim=dims).clamp(min=1e-6)
    return out


def mask_weights(masks: torch.Tensor, size: tuple[int, int], unmasked_weight: float = 0.0) -> torch.Tensor:
    """Pixel masks [B, 1, H, W] in [0, 1] → loss weights at the latents' size (h, w): area-averaged (kohya's
    `apply_masked_loss`), then unmasked_weight + (1 − unmasked_weight) × mask (OneTrainer's background weight)."""
    m = F.interpolate(masks.float(), size=tuple(size), mode="area")
    return unmasked_weight + (1.0 - unmasked_weight) * m


def huber_threshold(noise_scheduler, timesteps: torch.Tensor, huber_c: float, schedule: str,
                    scale: float = 1.0) -> torch.Tensor:
    """δ of each sample for the Huber losses, as kohya's `--huber_schedule`: `constant` c·scale; `exponential`
    exp(−t·ln(1/c)/T)·scale (1·scale at t = 0 down to c·scale at t = T); `snr` (1 − c)/(1 + σ_t)² + c with
    σ_t = √((1 − ᾱ_t)/ᾱ_t) (near 1 for clean steps, c for noisy ones; kohya applies no scale here)."""
    t = timesteps.long()
    if schedule == "constant":
        return torch.full(t.shape, huber_c * scale, dtype=torch.float32, device=t.device)
    if schedule == "exponential":
        alpha = -math.log(huber_c) / noise_scheduler.config.num_train_timesteps
        return torch.exp(-alpha * t.float()) * scale
    if schedule == "snr":
        abar = noise_scheduler.alphas_cumprod.to(device=t.device, dtype=torch.float32)[t]
        sigmas = ((1.0 - abar) / abar.clamp(min=ZERO_SNR_FLOOR)) ** 0.5
        return (1 - huber_c) / (1 + sigmas) ** 2 + huber_c
    raise ValueError(f"unsupported huber schedule {schedule!r}")


def paired_prior_loss(weighted: torch.Tensor, is_reg: torch.Tensor) -> torch.Tensor:
    """The loss of a paired prior-preservation batch (`dataset.prior_batches = "paired"`), as diffusers' DreamBooth
    scripts compute it: the training samples' mean loss + the class samples' mean loss, these already weighted by
    `prior_loss_weight` (= instance mean + prior_loss_weight × class mean). A batch without class samples (never
    made by the paired sampler) is the plain mean."""
    is_reg = is_reg.to(weighted.device)
    if not is_reg.any() or is_reg.all():
        return weighted.mean()
    return weighted[~is_reg].mean() + weighted[is_reg].mean()


# ᾱ of the last step under zero-terminal-SNR rescaling is 0 (SNR 0): the weights divide by SNR, so it is floored here
# at kohya's value (fix_noise_scheduler_betas_for_zero_terminal_snr); the ᾱ of ordinary schedules is far above it
ZERO_SNR_FLOOR = 4.8973451890853435e-08
SNR_CAP = 1000.0  # kohya caps the SNR of debiased estimation and v-scaling at 1000 (t = 0 is nearly infinite)


def snr(noise_scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """SNR(t) = ᾱ_t / (1 − ᾱ_t) of the model's own beta schedule (ᾱ floored at `ZERO_SNR_FLOOR`)."""
    abar = noise_scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)[timesteps]
    abar = abar.clamp(min=ZERO_SNR_FLOOR)
    return abar / (1.0 - abar)


def min_snr_weights(noise_scheduler, timesteps: torch.Tensor, gamma: float, prediction_type: str,
                    soft: bool = False) -> torch.Tensor:
    """Min-SNR-γ (Hang et al. 2023): min(SNR, γ)/SNR for ε-prediction, min(SNR, γ)/(SNR + 1) for v-prediction
    (the paper's form for v; diffusers' DreamBooth scripts use a different +1 floor, see diffusers.md §1.5). `soft`:
    the smooth minimum SNR·γ/(SNR + γ) instead of min(SNR, γ) (no kink at SNR = γ)."""
    s = snr(noise_scheduler, timesteps)
    clipped = s * gamma / (s + gamma) if soft else torch.clamp(s, max=gamma)
    if prediction_type == "v_prediction":
        return clipped / (s + 1.0)
    return clipped / s


def debiased_weights(noise_scheduler, timesteps: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """Debiased estimation (kohya's `--debiased_estimation_loss`, Yu et al. 2024): 1/√SNR for ε-prediction,
    1/(SNR + 1) for v-prediction, SNR capped at 1000."""
    s = snr(noise_scheduler, timesteps).clamp(max=SNR_CAP)
    if prediction_type == "v_prediction":
        return 1.0 / (s + 1.0)
    return 1.0 / torch.sqrt(s)


def v_like_noise_weights(noise_scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """kohya's `--scale_v_pred_loss_like_noise_pred`: SNR/(SNR + 1) (SNR capped at 1000), which turns the
    v-prediction loss into the ε-prediction loss's weighting over the timesteps."""
    s = snr(noise_scheduler, timesteps).clamp(max=SNR_CAP)
    return s / (s + 1.0)


def p2_weights(noise_scheduler, timesteps: torch.Tensor, gamma: float, k: float = 1.0) -> torch.Tensor:
    """P2 weighting (Choi et al. 2022; OneTrainer's `loss_weight_fn = P2`): 1/(k + SNR)^γ, k = 1."""
    return 1.0 / (k + snr(noise_scheduler, timesteps)) ** gamma


def timestep_weights(noise_scheduler, timesteps: torch.Tensor, training, prediction_type: str
                     ) -> torch.Tensor | None:
    """The product of the per-timestep loss weights `training` (a `TrainingConfig`) asks for, shape [B]; None when
    none is on. Min-SNR-γ, debiased estimation, P2 and the v-prediction scaling multiply, as in kohya (which applies
    them one after the other)."""
    weights = []
    if training.snr_gamma:
        weights.append(min_snr_weights(noise_scheduler, timesteps, training.snr_gamma, prediction_type,
                                       soft=training.soft_min_snr))
    if training.scale_v_pred_loss_like_noise_pred:
        weights.append(v_like_noise_weights(noise_scheduler, timesteps))
    if training.debiased_estimation_loss:
        weights.append(debiased_weights(noise_scheduler, timesteps, prediction_type))
    if training.p2_gamma:
        weights.append(p2_weights(noise_scheduler, timesteps, training.p2_gamma))
    if not weights:
        return None
    out = weights[0]
    for w in weights[1:]:
        out = out * w
    return out


def offset_noise(noise: torch.Tensor, offset: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add a per-image, per-channel constant: lets the model learn overall brightness (Guttenberg's noise offset).
    Draws from `generator` (on the noise's device), else from torch's RNG."""
    b, c = noise.shape[:2]
    shape = (b, c) + (1,) * (noise.ndim - 2)
    return noise + offset * torch.randn(shape, generator=generator, device=noise.device, dtype=noise.dtype)


def pyramid_noise(noise: torch.Tensor, iterations: int, discount: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Multi-resolution noise: add upsampled coarser noise levels, each `discount` times weaker, at random scale
    factors between 2 and 4, then renormalise to unit variance. Draws from `generator` (on the noise's device),
    else from torch's RNG."""
    b, c, h, w = noise.shape
    out = noise.clone()
    for i in range(iterations):
        r = 2.0 + 2.0 * torch.rand((), generator=generator, device=noise.device).item()
        hn, wn = max(1, int(h / r**i)), max(1, int(w / r**i))
        coarse = torch.randn((b, c, hn, wn), generator=generator, device=noise.device, dtype=noise.dtype)
        out = out + F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False) * discount**i
        if hn == 1 or wn == 1:
            break
    return out / out.std()
