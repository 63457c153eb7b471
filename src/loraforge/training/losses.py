"""The denoising objective and its variants: targets, min-SNR-γ weighting, noise offset, pyramid noise."""

from __future__ import annotations

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


def paired_prior_loss(weighted: torch.Tensor, is_reg: torch.Tensor) -> torch.Tensor:
    """The loss of a paired prior-preservation batch (`dataset.prior_batches = "paired"`), as diffusers' DreamBooth
    scripts compute it: the training samples' mean loss + the class samples' mean loss, these already weighted by
    `prior_loss_weight` (= instance mean + prior_loss_weight × class mean). A batch without class samples (never
    made by the paired sampler) is the plain mean."""
    is_reg = is_reg.to(weighted.device)
    if not is_reg.any() or is_reg.all():
        return weighted.mean()
    return weighted[~is_reg].mean() + weighted[is_reg].mean()


def snr(noise_scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """SNR(t) = ᾱ_t / (1 − ᾱ_t) of the model's own beta schedule."""
    abar = noise_scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)[timesteps]
    return abar / (1.0 - abar)


def min_snr_weights(noise_scheduler, timesteps: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-γ (Hang et al. 2023): min(SNR, γ)/SNR for ε-prediction, min(SNR, γ)/(SNR + 1) for v-prediction
    (the paper's form for v; diffusers' DreamBooth scripts use a different +1 floor, see diffusers.md §1.5)."""
    s = snr(noise_scheduler, timesteps)
    clipped = torch.clamp(s, max=gamma)
    if prediction_type == "v_prediction":
        return clipped / (s + 1.0)
    return clipped / s


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
