"""Sampling during and at the end of training: the validation prompts and/or a kohya prompt file, saved as PNGs
(with their parameters) and a grid, under `<run>/samples/`."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Callable

import torch

from .generate import SampleRequest, expand_requests, generate, make_grid, save_png, with_model_defaults
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


def base_request(cfg, resolution: tuple[int, int]) -> SampleRequest:
    """The `[sampling]` settings as a request without a prompt (what a prompt file's options start from); unset
    width / height are the run's (width, height) `resolution`."""
    s = cfg.sampling
    width, height = resolution
    return SampleRequest(
        prompt="",
        negative_prompt=s.negative_prompt,
        width=s.width or width,
        height=s.height or height,
        steps=s.num_inference_steps,
        guidance_scale=s.guidance_scale,
        seed=s.seed,
        sampler=s.sample_sampler,
    )


def sample_requests(cfg, items, resolution: tuple[int, int], replace: Callable[[str], str] | None = None) -> list[SampleRequest]:
    s = cfg.sampling
    base = base_request(cfg, resolution)
    requests = expand_requests(base, validation_prompts(cfg, items), s.num_images_per_prompt)
    if s.sample_prompts:
        requests += read_prompt_file(s.sample_prompts, base)
    if replace:
        requests = [dc_replace(r, prompt=replace(r.prompt), negative_prompt=replace(r.negative_prompt)) for r in requests]
    return requests


def with_embedding_names(text: str, embeddings: dict[str, str] | None) -> str:
    """`text` with each token abstraction replaced by the name of the embedding file (A1111's trigger word);
    `embeddings` maps abstraction -> name."""
    for abstraction, name in (embeddings or {}).items():
        text = text.replace(abstraction, name)
    return text


def a1111_prompt(prompt: str, lora_name: str | None, embeddings: dict[str, str] | None = None) -> str:
    """The prompt as it is written in A1111 to get the same image from the run's files: embedding names for the
    token abstractions, and the LoRA as `<lora:name:1>` (none for textual inversion alone: `lora_name` None)."""
    text = with_embedding_names(prompt, embeddings)
    return f"{text} <lora:{lora_name}:1>" if lora_name else text


def tokens_field(embeddings: dict[str, str] | None, tokens: list[str] | None) -> str:
    """The `parameters` field that says which new tokens the embedding file holds (`Embedding tokens: "name: <s0>,
    <s1>"`, in the quoted style of A1111's `TI hashes`); empty without embeddings."""
    if not embeddings or not tokens:
        return ""
    names = dict.fromkeys(embeddings.values())
    return ", Embedding tokens: " + ", ".join(f'"{name}: {",".join(tokens)}"' for name in names)


def model_name(model) -> str:
    """The base model's name for the `Model:` field (the embedded tiny model: `tiny-<family>`)."""
    return f"tiny-{model.family.name}" if model.is_tiny else Path(model.source.removeprefix("hub:")).stem


def sample_during_training(cfg, model, items, resolution: tuple[int, int], folder: Path, tag: str, autocast=None,
                           replace: Callable[[str], str] | None = None,
                           embeddings: dict[str, str] | None = None, lora: bool = True,
                           tokens: list[str] | None = None) -> list[Path]:
    """Sample the run's prompts with the network active. Each PNG's `parameters` chunk holds the prompt A1111 takes
    (`a1111_prompt`: `<lora:output_name:1>` unless the run writes no LoRA (`lora` false), embedding names for the
    token abstractions, never `<s0><s1>`) and the new `tokens` the embedding file holds (`tokens_field`)."""
    written_as = with_model_defaults(model, sample_requests(cfg, items, resolution))
    requests = with_model_defaults(model, sample_requests(cfg, items, resolution, replace))
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
    name = cfg.output.output_name
    texts = [dc_replace(r, prompt=a1111_prompt(r.prompt, name if lora else None, embeddings),
                        negative_prompt=with_embedding_names(r.negative_prompt, embeddings)
                        ).parameters_text(model_name(model)) + tokens_field(embeddings, tokens) for r in written_as]
    for i, (img, text) in enumerate(zip(images, texts)):
        written.append(save_png(img, folder / f"{tag}_{i}.png", text))
    if len(images) > 1:
        written.append(save_png(make_grid(images), folder / f"{tag}_grid.png", texts[0]))
    log.info("samples: %d image(s) in %s", len(images), folder)
    return written
