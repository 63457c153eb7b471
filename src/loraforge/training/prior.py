"""Prior preservation: make sure `class_data_dir` holds `num_class_images` class images, generating the missing
ones with the base model (before any adapter is attached).

Image i is `class_{i:05d}.png`, generated from its own seed (`training.seed + i`), written atomically: a run stopped
while generating continues where it stopped, and the images do not depend on the batch size (up to the
float rounding of batched convolutions).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..data.sources import list_images
from ..sampling.generate import SampleRequest, generate, save_png, with_model_defaults

log = logging.getLogger(__name__)


def class_image_path(folder: Path, index: int) -> Path:
    return folder / f"class_{index:05d}.png"


def ensure_class_images(cfg, model, accelerator, resolution: tuple[int, int], replacements: dict | None = None,
                        dtype: torch.dtype | None = None) -> list[Path]:
    """Generate the missing class images at the run's (width, height) `resolution`; returns the paths written
    (empty when there were enough)."""
    d, s = cfg.dataset, cfg.sampling  # `DatasetConfig` guarantees class_data_dir and class_prompt
    folder = Path(d.class_data_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    missing = d.num_class_images - len(list_images(folder))
    if missing <= 0:
        return []
    todo = [i for i in range(d.num_class_images * 2) if not class_image_path(folder, i).exists()][:missing]
    prompt = d.class_prompt
    for old, new in (replacements or {}).items():
        prompt = prompt.replace(old, new)
    written: list[Path] = []
    if accelerator.is_main_process:
        log.info("prior preservation: generating %d class image(s) of %r into %s", len(todo), prompt, folder)
        for part in (model.unet, model.vae, *model.text_encoders):
            part.to(accelerator.device, dtype=dtype) if dtype else part.to(accelerator.device)
        width, height = resolution
        requests = with_model_defaults(model, [
            SampleRequest(prompt, s.negative_prompt, width, height, s.num_inference_steps, s.guidance_scale,
                          cfg.training.seed + i, s.sample_sampler) for i in todo])
        with accelerator.autocast():
            images = generate(model, requests, clip_skip=cfg.training.clip_skip, batch_size=s.sample_batch_size)
        for i, img, req in zip(todo, images, requests):
            written.append(save_png(img, class_image_path(folder, i), req.parameters_text()))
    accelerator.wait_for_everyone()
    return written
