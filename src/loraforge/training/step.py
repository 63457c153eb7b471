"""One training step's loss: latents → noise → UNet prediction → target → loss."""

from __future__ import annotations

import torch

from ..models.text import encode_prompts, sdxl_time_ids
from .losses import diffusion_target, per_sample_mse


class StepMixin:
    """The per-step computation of the `Trainer` (kept apart from the run's orchestration)."""

    def encode_latents(self, pixel_values: torch.Tensor) -> torch.Tensor:
        m = self.model
        pixels = pixel_values.to(self.accelerator.device, dtype=self.vae_dtype)
        with torch.no_grad():
            latents = m.vae.encode(pixels).latent_dist.sample()
            shift = getattr(m.vae.config, "shift_factor", None) or 0.0
            return ((latents - shift) * m.vae.config.scaling_factor).to(self.weight_dtype)

    def compute_loss(
        self,
        batch: dict,
        latents: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss of one batch. Latents, noise and timesteps are drawn here unless given (tests fix them to overfit
        one batch)."""
        m, acc = self.model, self.accelerator
        if latents is None:
            latents = self.encode_latents(batch["pixel_values"])
        if noise is None:
            noise = torch.randn_like(latents)
        if timesteps is None:
            timesteps = torch.randint(
                0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device
            ).long()
        noise, timesteps = noise.to(latents), timesteps.to(latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        with torch.set_grad_enabled(self.train_te):
            cond = encode_prompts(m.family.is_sdxl, m.tokenizers, self.text_encoders, batch["captions"])
        added = None
        if m.family.is_sdxl:
            time_ids = sdxl_time_ids(batch["original_sizes"], batch["crops_top_left"], (self.resolution, self.resolution))
            added = {"text_embeds": cond.pooled.to(self.weight_dtype), "time_ids": time_ids.to(acc.device, self.weight_dtype)}
        pred = self.unet(
            noisy, timesteps, cond.prompt_embeds.to(self.weight_dtype), added_cond_kwargs=added, return_dict=False
        )[0]
        target = diffusion_target(self.noise_scheduler, latents, noise, timesteps, m.prediction_type)
        return per_sample_mse(pred, target).mean()
