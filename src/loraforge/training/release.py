"""The frozen VAE and text encoders released once the caches hold what training needs from them (issue 13).

With every latent cached, the VAE has nothing left to do until samples are drawn; with every text-encoder output
cached, neither have the text encoders unless they train (a text-encoder LoRA or pivotal tuning, which the text
cache refuses anyway). Released parts drop their weights (moved to the meta device: no memory on the training device
nor on the host); the modules stay, for their configurations (the consumer check of the written file reads them).
When samples are configured (`sampling.at_end`, `sampling.sample_every_n_steps` / `_epochs`), both stay.
"""

from __future__ import annotations

import logging

import torch

from ..data.build import wants_latent_cache, wants_text_cache

log = logging.getLogger(__name__)


def releasable(cfg) -> list[str]:
    """The frozen parts nothing needs after caching: "vae" when latents are cached, "text_encoders" when text-encoder
    outputs are and the text encoders do not train (no text-encoder LoRA, no pivotal tuning); none when samples are
    drawn during or after training. Decided from the config alone: the caches fill before the network exists."""
    s = cfg.sampling
    if s.at_end or s.sample_every_n_steps or s.sample_every_n_epochs:
        return []
    parts = ["vae"] if wants_latent_cache(cfg.dataset) else []
    text_trains = cfg.network.train_text_encoder or cfg.training.train_text_encoder_ti
    if wants_text_cache(cfg.dataset) and not text_trains:
        parts.append("text_encoders")
    return parts


def release(model, parts: list[str]) -> None:
    """Drop the weights of `parts` of `model` (see the module docstring)."""
    if not parts:
        return
    modules = ([model.vae] if "vae" in parts else []) + (list(model.text_encoders) if "text_encoders" in parts else [])
    for module in modules:
        module.to("meta")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    log.info("caches filled: %s released (not needed again: no samples are drawn%s)",
             " and ".join(p.replace("_", " ") for p in parts),
             ", the text encoders do not train" if "text_encoders" in parts else "")
