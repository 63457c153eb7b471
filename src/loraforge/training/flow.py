"""The math of rectified-flow training (FLUX.1), in plain functions of tensors so each is tested against hand
values: σ from a unit draw (with the fixed shift or FLUX's resolution-dependent shift), the noisy latents and the
target, the loss weighting schemes of diffusers' `compute_loss_weighting_for_sd3`, and FLUX's 2×2 latent packing
with its RoPE position ids (`FluxPipeline._pack_latents` / `_unpack_latents` / `_prepare_latent_image_ids`).

Conventions: σ ∈ [0, 1] is the noise level (σ = 1 pure noise); the transformer's `timestep` input is σ (the
pipeline passes timesteps / 1000, and its timesteps are σ·1000); a `timesteps` tensor elsewhere in loraforge is
σ·1000, as the scheduler's.
"""

from __future__ import annotations

import math

import torch


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """The fixed shift s·σ/(1 + (s − 1)·σ) (SD3 / kohya's `--discrete_flow_shift`): σ = 0 and 1 stay, the middle
    moves towards noise for s > 1."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def resolution_mu(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
                  max_shift: float = 1.15) -> float:
    """FLUX's μ for an image of `image_seq_len` packed tokens: linear from base_shift at base_seq_len to max_shift at
    max_seq_len (diffusers' `calculate_shift`; 1024² px = 4096 tokens → 1.15)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + (base_shift - slope * base_seq_len)


def time_shift(sigmas: torch.Tensor, mu: float) -> torch.Tensor:
    """FLUX's exponential time shift e^μ/(e^μ + (1/σ − 1)) (the scheduler's `time_shift`, exponent 1)."""
    return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))


def flow_sigmas(u: torch.Tensor, shift: float | None = None, mu: float | None = None) -> torch.Tensor:
    """σ of unit draws u ∈ (0, 1): u itself, shifted by a fixed `shift`, or time-shifted by FLUX's `mu`."""
    if shift is not None and mu is not None:
        raise ValueError("one shift at a time")
    if shift is not None:
        return shift_sigmas(u, shift)
    if mu is not None:
        return time_shift(u, mu)
    return u


def noisy_latents(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """(1 − σ)·latents + σ·noise, σ per sample (shape [B])."""
    s = sigmas.to(latents).view(-1, *([1] * (latents.ndim - 1)))
    return (1.0 - s) * latents + s * noise


def flow_target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """What the transformer predicts: the velocity d(noisy)/dσ = noise − latents."""
    return noise - latents


def loss_weighting(scheme: str, sigmas: torch.Tensor) -> torch.Tensor:
    """diffusers' `compute_loss_weighting_for_sd3`: `sigma_sqrt` σ⁻², `cosmap` 2/(π(1 − 2σ + 2σ²)), `none` 1."""
    sigmas = sigmas.float()
    if scheme == "sigma_sqrt":
        return sigmas ** -2.0
    if scheme == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas**2))
    if scheme == "none":
        return torch.ones_like(sigmas)
    raise ValueError(f"unsupported weighting scheme {scheme!r}")


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] → [B, (H/2)(W/2), 4C]: each 2×2 patch one token, its channels ordered (c, dy, dx)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack_latents` for latents of `height` × `width` (latent pixels)."""
    b, _, d = tokens.shape
    c = d // 4
    x = tokens.view(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, height, width)


def latent_image_ids(height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """RoPE position ids [(H/2)(W/2), 3] of the packed tokens of latents `height` × `width`: (0, row, column)."""
    rows = torch.arange(height // 2, device=device).view(-1, 1).expand(height // 2, width // 2)
    cols = torch.arange(width // 2, device=device).view(1, -1).expand(height // 2, width // 2)
    ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)
    return ids.to(dtype=dtype or torch.float32)
