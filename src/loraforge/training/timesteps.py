"""Which timesteps training draws, and the noise-schedule tricks around them: the timestep range
(`min_timestep` / `max_timestep`), the sampling distribution (`timestep_sampling`), flow matching's σ and its shifts
(`draw_flow_timestep`), input perturbation (`ip_noise_gamma`) and zero-terminal-SNR rescaling.

Every draw comes from a generator the caller seeds per sample (`LossStep.make_noise`), so a sample gets the same
timestep whatever batch or process it lands in.
"""

from __future__ import annotations

import numpy as np
import torch

from .flow import flow_sigmas, resolution_mu


def timestep_range(training, num_timesteps: int) -> tuple[int, int]:
    """[low, high) of the drawn timesteps: `min_timestep` (default 0) to `max_timestep` (default the schedule's
    length), as kohya's `--min_timestep` / `--max_timestep` (the maximum is exclusive)."""
    low = training.min_timestep or 0
    high = num_timesteps if training.max_timestep is None else min(training.max_timestep, num_timesteps)
    return low, high


def unit_draw(generator: torch.Generator, training) -> torch.Tensor:
    """(On the generator's device.) One draw u in (0, 1) of `training.timestep_sampling` (not `uniform`): `logit_normal` sigmoid(N(logit_mean,
    logit_std)) (SD3's weighting scheme), `sigmoid` sigmoid(sigmoid_scale · N(0, 1)) (kohya's FLUX / SD3
    `--timestep_sampling sigmoid`), `beta` Beta(timestep_beta_alpha, timestep_beta_beta)."""
    kind = training.timestep_sampling
    if kind == "logit_normal":
        z = torch.randn((1,), generator=generator, device=generator.device)
        return torch.sigmoid(training.logit_mean + training.logit_std * z)
    if kind == "sigmoid":
        return torch.sigmoid(training.sigmoid_scale * torch.randn((1,), generator=generator, device=generator.device))
    if kind == "beta":  # torch's Beta cannot take a generator: numpy's, seeded from it
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        value = np.random.default_rng(seed).beta(training.timestep_beta_alpha, training.timestep_beta_beta)
        return torch.tensor([value], dtype=torch.float32, device=generator.device)
    raise ValueError(f"unsupported timestep sampling {kind!r}")


def draw_timestep(generator: torch.Generator, training, num_timesteps: int) -> torch.Tensor:
    """One timestep (shape [1], int64) in `timestep_range`. `uniform` is torch.randint over the range (the same
    draw as before these options existed); the others map u of `unit_draw` onto the range: low + ⌊u·(high − low)⌋."""
    low, high = timestep_range(training, num_timesteps)
    if training.timestep_sampling == "uniform":
        return torch.randint(low, high, (1,), generator=generator, device=generator.device)
    u = unit_draw(generator, training)
    return (low + torch.floor(u * (high - low))).long().clamp(low, high - 1)


def draw_flow_timestep(generator: torch.Generator, training, num_timesteps: int, image_seq_len: int,
                       scheduler_config) -> torch.Tensor:
    """Flow matching (FLUX): one timestep σ·num_timesteps (shape [1], float). u is drawn as `timestep_sampling`
    says (`uniform`: torch.rand, the diffusers FLUX scripts' `weighting_scheme = none`), put in
    [min_timestep, max_timestep) / num_timesteps, then shifted: `flow_shift` (fixed), `flow_resolution_shift`
    (FLUX's μ for `image_seq_len` packed tokens, from the scheduler's base/max shift), or not at all."""
    if training.timestep_sampling == "uniform":
        u = torch.rand((1,), generator=generator, device=generator.device)
    else:
        u = unit_draw(generator, training)
    low, high = timestep_range(training, num_timesteps)
    u = (low + u * (high - low)) / num_timesteps
    mu = None
    if training.flow_resolution_shift:
        c = scheduler_config
        mu = resolution_mu(image_seq_len, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                           c.get("base_shift", 0.5), c.get("max_shift", 1.15))
    sigma = flow_sigmas(u.clamp(1e-5, 1.0), training.flow_shift, mu)  # σ > 0: sigma_sqrt weights divide by it
    return sigma * num_timesteps


def perturbation_generator(noise_seed: int) -> torch.Generator:
    """The generator of a sample's input perturbation: its own stream, apart from the sample's noise and timestep
    (so turning `ip_noise_gamma` on leaves those as they were)."""
    return torch.Generator().manual_seed((int(noise_seed) * 6364136223846793005 + 1442695040888963407) % 2**63)


def input_perturbation(shape: tuple[int, ...], noise_seeds, gamma: float, random_strength: bool) -> torch.Tensor:
    """Input perturbation (Ning et al. 2023; kohya's `--ip_noise_gamma`): γ · N(0, 1) per sample, added to the noise
    that makes the noisy latents but not to the target. With `random_strength` (kohya's
    `--ip_noise_gamma_random_strength`) each sample's γ is scaled by u ~ U(0, 1)."""
    out = []
    for seed in noise_seeds:
        g = perturbation_generator(seed)
        strength = gamma * (torch.rand((1,), generator=g).item() if random_strength else 1.0)
        out.append(strength * torch.randn((1, *shape), generator=g))
    return torch.cat(out)


def zero_terminal_snr_scheduler(noise_scheduler):
    """The same DDPM schedule with its betas rescaled so the last timestep has SNR 0 (Lin et al. 2024, "Common
    Diffusion Noise Schedules and Sample Steps are Flawed"; kohya's `--zero_terminal_snr`): diffusers'
    `rescale_betas_zero_snr`, which implements the paper's algorithm 1."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(noise_scheduler.config, rescale_betas_zero_snr=True)
