"""Sampling during and at the end of training: the validation prompts, saved as PNGs (with their parameters) and
a grid, under `<run>/samples/`."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from .generate import SampleRequest, expand_requests, generate, make_grid, save_png

log = logging.getLogger(__name__)


def validation_prompts(cfg, items) -> list[str]:
    if cfg.sampling.validation_prompts:
        return list(cfg.sampling.validation_prompts)
    if cfg.dataset.instance_prompt:
        return [cfg.dataset.instance_prompt]
    return [items[0].caption]


def sample_during_training(cfg, model, items, resolution: int, folder: Path, tag: str, autocast=None) -> list[Path]:
    s = cfg.sampling
    base = SampleRequest(
        prompt="",
        negative_prompt=s.negative_prompt,
        width=s.width or resolution,
        height=s.height or resolution,
        steps=s.num_inference_steps,
        guidance_scale=s.guidance_scale,
        seed=s.seed,
        sampler=s.sampler,
    )
    requests = expand_requests(base, validation_prompts(cfg, items), s.num_images_per_prompt)
    # Sampling must not disturb the training RNG streams (resume equality depends on them).
    cpu_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        with autocast or contextlib.nullcontext():
            images = generate(model, requests)
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)
    written = []
    for i, (img, req) in enumerate(zip(images, requests)):
        written.append(save_png(img, folder / f"{tag}_{i}.png", req.parameters_text(cfg.output.output_name)))
    if len(images) > 1:
        written.append(save_png(make_grid(images), folder / f"{tag}_grid.png", requests[0].parameters_text()))
    log.info("samples: %d image(s) in %s", len(images), folder)
    return written
