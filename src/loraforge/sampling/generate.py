"""Generate images with a model (and whatever LoRA is active in it), and save them the way AUTOMATIC1111 does:
the generation parameters go into the PNG `parameters` text chunk."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, PngImagePlugin

from ..models.text import encode_tokens, tokenize
from ..utils.files import atomic_path
from .samplers import A1111_NAMES, make_scheduler, normalize_sampler


FLOW_SAMPLER = "flow_euler"  # FLUX's FlowMatchEuler with the model's shift, whatever the sampler asked


@dataclass(frozen=True)
class SampleRequest:
    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int | None = 25  # None: the model's (`SDModel.sample_defaults`), filled by `with_model_defaults`
    guidance_scale: float | None = 7.0
    seed: int = 0
    sampler: str = "euler_a"

    def parameters_text(self, model_name: str = "") -> str:
        """A1111's `parameters` chunk, which A1111's PNG Info tab and most image browsers read. FLUX (the
        `FLOW_SAMPLER`) as Forge writes it: Euler on the simple schedule, CFG scale 1 (no negative pass) and the
        guidance as `Distilled CFG Scale` (omitted for [schnell], which has none), so Forge reads it back right."""
        lines = [self.prompt]
        if self.negative_prompt:
            lines.append(f"Negative prompt: {self.negative_prompt}")
        if self.sampler == FLOW_SAMPLER:
            guidance = f"CFG scale: 1, Distilled CFG Scale: {self.guidance_scale:g}" if self.guidance_scale else \
                "CFG scale: 1"
            sampling = f"Sampler: Euler, Schedule type: Simple, {guidance}"
        else:
            sampling = f"Sampler: {A1111_NAMES.get(self.sampler, self.sampler)}, CFG scale: {self.guidance_scale:g}"
        tail = f"Steps: {self.steps}, {sampling}, Seed: {self.seed}, Size: {self.width}x{self.height}"
        if model_name:
            tail += f", Model: {model_name}"
        lines.append(tail)
        return "\n".join(lines)


def with_model_defaults(model, requests: list[SampleRequest]) -> list[SampleRequest]:
    """`requests` with unset steps / guidance scale (None) set to the model's (`SDModel.sample_defaults`: SD 25
    steps at CFG 7, FLUX.1 [dev] 28 at guidance 3.5, [schnell] 4)."""
    steps, guidance = model.sample_defaults
    flow = {"sampler": FLOW_SAMPLER} if model.family.is_flow else {}  # FLUX samples with its own scheduler
    return [replace(r, steps=steps if r.steps is None else r.steps,
                    guidance_scale=guidance if r.guidance_scale is None else r.guidance_scale, **flow)
            for r in requests]


def encode_for_pipeline(model, pipe, prompt: str, negative_prompt: str, clip_skip: int | None = None) -> dict:
    """Prompt embeddings computed the way training computes them (clip skip, new tokens), passed to the pipeline
    as `prompt_embeds`; the negative side follows diffusers (SDXL zeroes an empty negative prompt). A token of a
    multi-vector embedding (`tok` with `tok_1`, ...) is expanded per tokenizer, as the pipelines' `encode_prompt`
    does."""
    import torch

    def encode(text: str):
        ids = []
        for tok, te in zip(model.tokenizers, model.text_encoders):
            if hasattr(pipe, "maybe_convert_prompt"):
                text_for_tok = pipe.maybe_convert_prompt(text, tok)
            else:
                text_for_tok = text
            ids.append(tokenize(tok, [text_for_tok]).to(te.device))
        return encode_tokens(model.family, model.text_encoders, ids, clip_skip)

    with torch.no_grad():
        cond = encode(prompt)
        if model.family.is_flow:  # FLUX: guidance-distilled, no negative prompt (FluxPipeline's true CFG is off)
            return {"prompt_embeds": cond.prompt_embeds, "pooled_prompt_embeds": cond.pooled}
        if cond.pooled is not None and not negative_prompt and pipe.config.get("force_zeros_for_empty_prompt", False):
            neg = type(cond)(torch.zeros_like(cond.prompt_embeds), torch.zeros_like(cond.pooled))
        else:
            neg = encode(negative_prompt or "")
    kwargs = {"prompt_embeds": cond.prompt_embeds, "negative_prompt_embeds": neg.prompt_embeds}
    if cond.pooled is not None:
        kwargs.update(pooled_prompt_embeds=cond.pooled, negative_pooled_prompt_embeds=neg.pooled)
    return kwargs


def make_pipeline(model, sampler: str, img2img: bool = False, progress: bool = False):
    """A pipeline over the model's modules with the sampler's scheduler; img2img's pipeline class when asked. A
    flow-matching family (FLUX) samples with its own FlowMatchEuler scheduler and its shift, whatever `sampler`."""
    if model.family.is_flow:
        scheduler = type(model.scheduler).from_config(model.scheduler.config)
    else:
        scheduler = make_scheduler(sampler, model.scheduler.config, model.prediction_type)
    pipe = model.pipeline(scheduler=scheduler)
    if img2img:
        family = model.family
        pipe = family.pipeline_class(img2img=True)(**{**pipe.components, **family.pipeline_kwargs})
    pipe.set_progress_bar_config(disable=not progress)
    return pipe


def generate(model, requests: list[SampleRequest], *, clip_skip: int | None = None, init_image=None,
             strength: float = 0.75, output_type: str = "pil", progress: bool = False, batch_size: int = 1) -> list:
    """One image per request: the only generation path (training samples, class images, `loraforge sample`,
    `loraforge eval`). Each image's generator is a CPU generator seeded by its request, so a seed gives the same
    image whatever the device (and, up to the float rounding of batched convolutions, whatever the batch). With
    `init_image` (a PIL image) img2img at `strength`, the image resized to each request's size. `batch_size` > 1
    runs up to that many consecutive requests that differ only in prompt, negative prompt and seed as one batch
    (their prompt embeddings stacked)."""
    import torch

    images = []
    pipes: dict[str, object] = {}
    encoded: dict[tuple[str, str], dict] = {}  # a prompt sampled with several seeds is encoded once
    requests = with_model_defaults(model, requests)
    flow = model.family.is_flow  # FLUX: guidance_scale feeds [dev]'s guidance embedding ([schnell] ignores it)
    for batch in _batches(requests, batch_size):
        req = batch[0]
        key = FLOW_SAMPLER if flow else normalize_sampler(req.sampler)
        if key not in pipes:
            pipes[key] = make_pipeline(model, key, img2img=init_image is not None, progress=progress)
        pipe = pipes[key]
        for r in batch:
            if (r.prompt, r.negative_prompt) not in encoded:
                encoded[r.prompt, r.negative_prompt] = encode_for_pipeline(model, pipe, r.prompt, r.negative_prompt,
                                                                           clip_skip)
        parts = [encoded[r.prompt, r.negative_prompt] for r in batch]  # tokenized to one length: they stack
        kwargs = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        if init_image is not None:
            kwargs.update(image=init_image.convert("RGB").resize((req.width, req.height)), strength=strength)
        else:
            kwargs.update(width=req.width, height=req.height)
        gens = [torch.Generator("cpu").manual_seed(r.seed) for r in batch]
        with torch.no_grad():
            out = pipe(**kwargs, num_inference_steps=req.steps, guidance_scale=req.guidance_scale,
                       generator=gens[0] if len(batch) == 1 else gens, output_type=output_type)
        images.extend(out.images)
    return images


def _batches(requests: list[SampleRequest], size: int) -> list[list[SampleRequest]]:
    """Consecutive requests that differ only in prompt, negative prompt and seed, `size` at most per batch."""
    out: list[list[SampleRequest]] = []

    def settings(r: SampleRequest) -> SampleRequest:
        return replace(r, prompt="", negative_prompt="", seed=0)

    for req in requests:
        last = out[-1] if out else None
        if last and len(last) < size and settings(last[0]) == settings(req):
            last.append(req)
        else:
            out.append([req])
    return out


def save_png(image: Image.Image, path: Path, parameters: str) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    with atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path


def make_grid(images: list[Image.Image], cols: int | None = None) -> Image.Image:
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        grid.paste(im.resize((w, h)) if im.size != (w, h) else im, ((i % cols) * w, (i // cols) * h))
    return grid


def expand_requests(base: SampleRequest, prompts: list[str], per_prompt: int) -> list[SampleRequest]:
    return [replace(base, prompt=p, seed=base.seed + i) for p in prompts for i in range(per_prompt)]
