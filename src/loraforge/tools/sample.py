"""`loraforge sample`: txt2img and img2img with any number of LoRA files and embeddings.

LoRA files of any algorithm and layout (ours, kohya / LyCORIS, diffusers) are applied by patching the weights,
`W + s·ΔW`, with separate UNet and text-encoder strengths. That is exact for every algorithm (diffusers' runtime
`load_lora_weights` knows LoRA/LoCon only and drops DoRA) and costs nothing per step. Embeddings go in through
diffusers' `load_textual_inversion` (SDXL: `clip_l` into the first encoder, `clip_g` into the second). PNGs carry the
generation parameters in A1111's `parameters` text chunk, with the LoRA files as `<lora:name:te:unet>` tags in the
prompt, so A1111's PNG Info reproduces the call.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import FamilyMismatchError, InputNotFoundError, ShapeMismatchError, ToolError
from ..families import FAMILIES
from ..formats.embeddings import embedding_layouts, load_embeddings
from ..sampling.generate import SampleRequest, expand_requests, generate, save_png, with_model_defaults
from ..sampling.prompts import PromptFileError, read_prompt_file
from ..sampling.samplers import normalize_sampler
from .common import LoraSpec, apply_lora_files, check_output, find_lora_file, load_sd_model
from .flux_models import apply_flux_lora_files

if TYPE_CHECKING:  # the annotation only
    from PIL import Image


@dataclass
class EmbeddingSpec:
    path: str
    token: str | None = None  # default: the file name without extension (A1111's convention)

    @property
    def trigger(self) -> str:
        return self.token or Path(self.path).stem


def load_embedding(model, spec: EmbeddingSpec, allow_pickle: bool = False) -> None:
    """Add the embedding's vectors to the tokenizers and text encoders under its trigger token (several vectors:
    `tok`, `tok_1`, ...; the pipelines expand `tok` in prompts). A FLUX embedding without `t5` vectors leaves T5
    alone: T5 reads the trigger as text."""
    vectors = load_embeddings(spec.path, allow_pickle=allow_pickle)
    fam = model.family
    if tuple(sorted(vectors)) not in {tuple(sorted(k)) for k in embedding_layouts(fam.name)}:
        kind = "/".join(f.label for f in FAMILIES.values()
                        if tuple(sorted(vectors)) in {tuple(sorted(k)) for k in embedding_layouts(f.name)})
        raise FamilyMismatchError(f"{spec.path} is an {kind or 'unknown'} embedding ({', '.join(sorted(vectors))}); "
                                  f"the model is {fam.label} ({' or '.join(', '.join(k) for k in embedding_layouts(fam.name))})")
    pipe = model.pipeline()
    for key, te, tok in zip(fam.embedding_keys, model.text_encoders, model.tokenizers):
        if key not in vectors:
            continue
        v = vectors[key]
        width = te.get_input_embeddings().weight.shape[1]
        if v.shape[1] != width:
            raise ShapeMismatchError(f"{spec.path}: {key} vectors are {v.shape[1]} wide, the text encoder {width}")
        pipe.load_textual_inversion(v.to(te.dtype), token=spec.trigger, text_encoder=te, tokenizer=tok)


def prepare_model(model: str | None, loras: list[LoraSpec] = (), embeddings: list[EmbeddingSpec] = (), *,
                  family: str = "auto", allow_pickle: bool = False, skip_unknown: bool = False,
                  config_dir: str | None = None):
    """Load the base model and apply the LoRA files and embeddings."""
    sd = load_sd_model(model, family, allow_pickle, config_dir)
    apply = apply_flux_lora_files if sd.family.is_flow else apply_lora_files  # FLUX files bind by their own names
    apply(sd, list(loras), allow_pickle, skip_unknown)
    for spec in embeddings:
        load_embedding(sd, spec, allow_pickle)
    return sd


def build_requests(prompt: str | None = None, prompt_file: str | None = None, *, negative_prompt: str = "",
                   sampler: str = "euler_a", steps: int | None = None, guidance_scale: float | None = None, width: int = 0,
                   height: int = 0, seed: int = 0, batch: int = 1, batch_size: int = 1) -> list[SampleRequest]:
    """Requests from a prompt or a kohya prompt file (its `--n --w --h --d --l --s --ss` override the defaults);
    `batch` images per prompt with seeds seed, seed+1, ... A size of 0, steps or guidance None mean the model's own
    (`sample` fills them). `batch_size` (`sample`'s) is checked here with the other numbers."""
    for flag, value in (("--steps", steps), ("--batch", batch), ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise ToolError(f"{flag} {value}: it must be 1 or more")
    if width < 0 or height < 0:
        flag, value = ("--width", width) if width < 0 else ("--height", height)
        raise ToolError(f"{flag} {value}: give a multiple of 8, or 0 for the model's own size")
    if not 0 <= seed < 2**32:
        raise ToolError(f"--seed {seed}: give a seed from 0 to 4294967295 (there is no random seed: the PNG records "
                        "the seed each image was made with)")
    try:
        base = SampleRequest("", negative_prompt, width, height, steps, guidance_scale, seed, normalize_sampler(sampler))
        if (prompt is None) == (prompt_file is None):
            raise ToolError("give a prompt or a prompt file (--prompt-file), not both")
        reqs = read_prompt_file(prompt_file, base) if prompt_file else [replace(base, prompt=prompt)]
    except (PromptFileError, ValueError) as e:
        if isinstance(e, ToolError):
            raise
        raise ToolError(str(e)) from None
    for r in reqs:
        if r.steps is not None and r.steps < 1:
            raise ToolError(f"{prompt_file}: the prompt {r.prompt!r} asks for {r.steps} steps (--s); give 1 or more")
        if r.width % 8 or r.height % 8:
            raise ToolError(f"size {r.width}x{r.height}: width and height must be multiples of 8")
    return [r2 for r in reqs for r2 in expand_requests(r, [r.prompt], batch)]


def parameters_text(req: SampleRequest, model_name: str, loras: list[LoraSpec], strength: float | None) -> str:
    """A1111's `parameters` chunk; LoRA files as `<lora:name:te:unet>` tags after the prompt."""
    lines = req.parameters_text(model_name).split("\n")
    tags = " ".join(
        f"<lora:{Path(s.path).stem}:{s.te:g}>" if s.te == s.unet else f"<lora:{Path(s.path).stem}:{s.te:g}:{s.unet:g}>"
        for s in loras
    )
    if tags:
        lines[0] = f"{lines[0]} {tags}"
    if strength is not None:
        lines[-1] += f", Denoising strength: {strength:g}"
    return "\n".join(lines)


def sample(model: str | None, requests: list[SampleRequest], out_dir, *, loras: list[LoraSpec] = (),
           embeddings: list[EmbeddingSpec] = (), family: str = "auto", init_image=None, strength: float = 0.75,
           clip_skip: int | None = None, allow_pickle: bool = False, skip_unknown: bool = False,
           overwrite: bool = False, config_dir: str | None = None, batch_size: int = 1) -> list[Path]:
    """Generate every request and write `out_dir/<n>-<seed>.png`, numbered on from the images already there; returns
    the paths. `init_image` is a path or a PIL image (img2img). A LoRA may be named by its run folder. `clip_skip`
    as in training (`training.clip_skip`: 1 = the penultimate layer of SD 1.x/2.x). `batch_size`: images generated
    at once (requests of the same size, steps, guidance and sampler). Options are keyword-only."""
    out_dir = Path(out_dir)
    first = next_image_number(out_dir)
    paths = [out_dir / f"{first + i:05d}-{r.seed}.png" for i, r in enumerate(requests)]
    for p in paths:
        check_output(p, overwrite)
    loras = [replace(s, path=str(find_lora_file(s.path))) for s in loras]
    if init_image is not None and not 0 < strength <= 1:
        raise ToolError(f"--strength {strength:g}: img2img strength must be between 0 and 1 (above 0; 1 ignores the "
                        "init image, 0.75 is the default)")
    if isinstance(init_image, (str, Path)):
        init_image = open_image(init_image)
    sd = prepare_model(model, loras, embeddings, family=family, allow_pickle=allow_pickle, skip_unknown=skip_unknown,
                       config_dir=config_dir)
    size = default_size(sd, init_image)
    requests = with_model_defaults(sd, [replace(r, width=r.width or size[0], height=r.height or size[1])
                                        for r in requests])
    images = generate(sd, requests, clip_skip=clip_skip, init_image=init_image, strength=strength,
                      batch_size=batch_size)
    name = Path(model).stem if model else f"tiny-{sd.family.name}"
    for path, image, req in zip(paths, images, requests):
        save_png(image, path, parameters_text(req, name, list(loras), strength if init_image is not None else None))
    return paths


def next_image_number(folder: Path) -> int:
    """The number the next image in `folder` gets: one more than the highest `NNNNN-*.png` there (A1111's rule), so
    a second run into the same folder adds to it."""
    numbers = [int(p.name[:5]) for p in folder.glob("[0-9][0-9][0-9][0-9][0-9]-*.png")] if folder.is_dir() else []
    return max(numbers, default=-1) + 1


def open_image(path) -> "Image.Image":
    """An `--init-image`, fully read: a missing, truncated or non-image file is a `ToolError` naming it."""
    from PIL import Image

    if not Path(path).is_file():
        raise InputNotFoundError(f"{path}: no such image")
    try:
        image = Image.open(path)
        image.load()
    except (OSError, SyntaxError, ValueError) as e:  # PIL: UnidentifiedImageError, "image file is truncated"
        raise ToolError(f"--init-image {path}: not a readable image ({e}); pass a PNG, JPEG or WebP file") from None
    return image


def default_size(model, init_image=None) -> tuple[int, int]:
    """The init image's size (rounded down to multiples of 8), else the model's native resolution."""
    if init_image is not None:
        w, h = init_image.size
        return max(8, w // 8 * 8), max(8, h // 8 * 8)
    return model.native_size, model.native_size
