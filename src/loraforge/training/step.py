"""One training step's loss: latents → noise → UNet prediction → target → weighted loss. A flow-matching family
(FLUX) takes the same path with its own noise, prediction and target (`training.flow`).

`LossStep` names everything the loss depends on; the `Trainer` builds one once its models are prepared and the
loop (and the tests) call it. Nothing here reaches back into the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..config.training import TrainingConfig
from ..data.cache import sample_latents, vae_scaling
from ..models.text import Conditioning, encode_prompts, sdxl_time_ids, text_ids
from .flow import flow_target, latent_image_ids, loss_weighting, noisy_latents, pack_latents, unpack_latents
from .losses import (
    diffusion_target, huber_threshold, mask_weights, offset_noise, paired_prior_loss, per_sample_loss, pyramid_noise,
    timestep_weights,
)
from .timesteps import draw_flow_timestep, draw_timestep, input_perturbation


@dataclass
class LossStep:
    training: TrainingConfig
    model: object  # the `SDModel`: family, VAE, tokenizers, prediction type
    unet: torch.nn.Module  # as prepared by accelerate (maybe wrapped)
    text_encoders: list
    noise_scheduler: object
    device: torch.device
    weight_dtype: torch.dtype
    vae_dtype: torch.dtype
    resolution: tuple[int, int]  # (width, height) of the run
    text_needs_grad: Callable[[], bool]  # changes when pivotal tuning freezes the new embeddings
    max_token_length: int | None = None  # `dataset.max_token_length`: kohya's chunked prompts beyond 75
    prior_batches: str = "mixed"  # `dataset.prior_batches`: "paired" batches split their loss as diffusers does

    def encode_latents(self, pixel_values: torch.Tensor, seeds: list[int] | None = None) -> torch.Tensor:
        """Scaled latents of a batch. With `seeds` (the batch's `latent_seeds`) each sample's draw from the latent
        distribution uses its own generator, as the latent cache does, so cached and live runs agree."""
        m = self.model
        pixels = pixel_values.to(self.device, dtype=self.vae_dtype)
        with torch.no_grad():
            dist = m.vae.encode(pixels).latent_dist
            scale, shift = vae_scaling(m.vae)
            if seeds is not None:
                return sample_latents(dist.mean, dist.std, list(seeds), scale, shift).to(self.weight_dtype)
            return ((dist.sample() - shift) * scale).to(self.weight_dtype)

    def make_noise(self, latents: torch.Tensor, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise (with `noise_offset` and pyramid noise) and timestep of each sample, drawn from the sample's own
        generator (on the latents' device) seeded by the batch's `noise_seeds` (from (seed, epoch, index), like all of
        a sample's randomness): a sample gets the same noise whatever batch or process it lands in, so N processes at batch B
        train as one process at batch N·B, and a resumed run draws what an uninterrupted one would."""
        t = self.training
        num_timesteps = self.noise_scheduler.config.num_train_timesteps
        flow = self.model.family.is_flow
        image_seq_len = (latents.shape[-2] // 2) * (latents.shape[-1] // 2)  # FLUX's packed tokens
        noises, timesteps = [], []
        device = latents.device  # drawn where they are used: no host-to-device copy per step on a GPU
        for seed in seeds:
            g = torch.Generator(device=device).manual_seed(int(seed))
            if flow:  # σ·1000, float: timestep_sampling, the range, flow_shift / flow_resolution_shift
                timesteps.append(draw_flow_timestep(g, t, num_timesteps, image_seq_len, self.noise_scheduler.config))
            else:
                timesteps.append(draw_timestep(g, t, num_timesteps))  # min/max_timestep, timestep_sampling
            noise = torch.randn((1, *latents.shape[1:]), generator=g, device=device)
            if t.noise_offset:
                noise = offset_noise(noise, t.noise_offset, g)
            if t.multires_noise_iterations:
                noise = pyramid_noise(noise, t.multires_noise_iterations, t.multires_noise_discount, g)
            noises.append(noise)
        steps = torch.cat(timesteps)
        return torch.cat(noises).to(latents), steps if flow else steps.long()

    def encode_batch_text(self, captions: list[str]):
        m = self.model
        with torch.set_grad_enabled(self.text_needs_grad()):
            return encode_prompts(m.family, m.tokenizers, self.text_encoders, captions,
                                  self.training.clip_skip, self.max_token_length)

    def flow_prediction(self, noisy: torch.Tensor, sigmas: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """FLUX's transformer on noisy latents [B, C, H, W], as `FluxPipeline` calls it: latents packed 2×2 into
        tokens with their image ids, text ids, timestep σ, and for [dev] the guidance embedding at
        `training.guidance_scale`; the prediction unpacked to [B, C, H, W]."""
        b, _, h, w = noisy.shape
        dtype = self.weight_dtype
        guidance = None
        if self.model.guidance_embeds:
            guidance = torch.full((b,), float(self.training.guidance_scale), device=noisy.device, dtype=torch.float32)
        pred = self.unet(
            hidden_states=pack_latents(noisy).to(dtype),
            timestep=sigmas.to(dtype),
            guidance=guidance,
            pooled_projections=cond.pooled.to(dtype),
            encoder_hidden_states=cond.prompt_embeds.to(dtype),
            txt_ids=text_ids(cond).to(dtype),
            img_ids=latent_image_ids(h, w, device=noisy.device, dtype=dtype),
            return_dict=False,
        )[0]
        return unpack_latents(pred, h, w)

    def compute_loss(
        self,
        batch: dict,
        latents: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss of one batch. Latents, noise and timesteps are drawn here unless given (tests fix them)."""
        m, device = self.model, self.device
        if latents is None and "latents" in batch:  # from the latent cache, already scaled
            latents = batch["latents"].to(device, dtype=self.weight_dtype)
        if latents is None:
            latents = self.encode_latents(batch["pixel_values"], batch.get("latent_seeds"))
        if noise is None or timesteps is None:
            drawn_noise, drawn_timesteps = self.make_noise(latents, batch["noise_seeds"])
            noise = drawn_noise if noise is None else noise
            timesteps = drawn_timesteps if timesteps is None else timesteps
        noise, timesteps = noise.to(latents), timesteps.to(latents.device)
        flow = m.family.is_flow
        sigmas = timesteps.float() / self.noise_scheduler.config.num_train_timesteps if flow else None
        noisy_from = noise
        if self.training.ip_noise_gamma:  # input perturbation: the noisy latents only, not the target
            noisy_from = noise + input_perturbation(tuple(latents.shape[1:]), batch["noise_seeds"],
                                                    self.training.ip_noise_gamma,
                                                    self.training.ip_noise_gamma_random_strength).to(noise)
        if flow:
            noisy = noisy_latents(latents, noisy_from, sigmas)
        else:
            noisy = self.noise_scheduler.add_noise(latents, noisy_from, timesteps)
        if self.training.channels_last:  # NHWC, as the UNet's convolution weights (training.channels_last)
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        if "prompt_embeds" in batch:  # from the text-encoder cache
            pooled = batch.get("pooled")
            cond = Conditioning(batch["prompt_embeds"].to(device), None if pooled is None else pooled.to(device))
        else:
            cond = self.encode_batch_text(batch["captions"])
        added = None
        if m.family.size_conditioning:
            width, height = self.resolution
            target_size = tuple(batch.get("target_size") or (height, width))  # the batch's bucket, (h, w)
            time_ids = sdxl_time_ids(batch["original_sizes"], batch["crops_top_left"], target_size)
            added = {"text_embeds": cond.pooled.to(self.weight_dtype), "time_ids": time_ids.to(device, self.weight_dtype)}
        if flow:
            pred = self.flow_prediction(noisy, sigmas, cond)
            target = flow_target(latents, noise)
        else:
            pred = self.unet(
                noisy, timesteps, cond.prompt_embeds.to(self.weight_dtype), added_cond_kwargs=added, return_dict=False
            )[0]
            target = diffusion_target(self.noise_scheduler, latents, noise, timesteps, m.prediction_type)
        t = self.training
        huber_c = None
        if t.loss_type in ("huber", "smooth_l1"):
            huber_c = huber_threshold(self.noise_scheduler, timesteps, t.huber_c, t.huber_schedule, t.huber_scale)
        weight_map = None
        if t.masked_loss and "masks" in batch:  # dataset masks, scaled down to the latents
            weight_map = mask_weights(batch["masks"].to(device), pred.shape[-2:], t.unmasked_weight)
        loss = per_sample_loss(pred, target, t.loss_type, huber_c, weight_map, t.normalize_masked_area_loss)
        if flow:
            weights = None if t.weighting_scheme == "none" else loss_weighting(t.weighting_scheme, sigmas)
        else:
            weights = timestep_weights(self.noise_scheduler, timesteps, t, m.prediction_type)
        if weights is not None:  # min-SNR-γ, debiased estimation, P2, v scaled like ε; flow: weighting_scheme
            loss = loss * weights
        if "loss_weights" in batch:  # prior-preservation (class) samples weigh prior_loss_weight
            loss = loss * batch["loss_weights"].to(loss)
        if self.prior_batches == "paired" and "is_reg" in batch:
            return paired_prior_loss(loss, batch["is_reg"])
        return loss.mean()
