"""Sampling during and at the end of training: the validation prompts and/or a kohya prompt file, saved as PNGs
(with their parameters) and a grid, under `<run>/samples/`."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Callable

import torch

from .generate import SampleRequest, expand_requests, generate, make_grid, save_png
from .prompts import read_prompt_file

log = logging.getLogger(__name__)


def validation_prompts(cfg, items) -> list[str]:
    s = cfg.sampling
    prompts = ([s.validation_prompt] if s.validation_prompt else []) + list(s.validation_prompts)
    if prompts or s.sample_prompts:
        return prompts
    if cfg.dataset.instance_prompt:
        return [cfg.dataset.instance_prompt]
    return [items[0].caption]


def base_request(cfg, resolution: int) -> SampleRequest:
    """The `[sampling]` settings as a request without a prompt (what a prompt file's options start from)."""
    s = cfg.sampling
    return SampleRequest(
        prompt="",
        negative_prompt=s.negative_prompt,
        width=s.width or resolution,
        height=s.height or resolution,
        steps=s.num_inference_steps,
        guidance_scale=s.guidance_scale,
        seed=s.seed,
        sampler=s.sample_sampler,
    )


def sample_requests(cfg, items, resolution: int, replace: Callable[[str], str] | None = None) -> list[SampleRequest]:
    s = cfg.sampling
    base = base_request(cfg, resolution)
    requests = expand_requests(base, validation_prompts(cfg, items), s.num_images_per_prompt)
    if s.sample_prompts:
        requests += read_prompt_file(s.sample_prompts, base)
    if replace:
        requests = [dc_replace(r, prompt=replace(r.prompt), negative_prompt=replace(r.negative_prompt)) for r in requests]
    return requests


def sample_during_training(cfg, model, items, resolution: int, folder: Path, tag: str, autocast=None,
                           replace: Callable[[str], str] | None = None) -> list[Path]:
    requests = sample_requests(cfg, items, resolution, replace)
    # Sampling must not disturb the training RNG streams (resume equality depends on them).
    cpu_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        with autocast or contextlib.nullcontext():
            images = generate(model, requests, clip_skip=cfg.training.clip_skip)
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
