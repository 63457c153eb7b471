"""`[dataset]`: the training images and their captions, buckets, caches and prior preservation.

Sources (any combination, except that a kohya `config_file` stands alone): `instance_dir` (one folder),
`train_data_dir` / `reg_data_dir` (kohya `N_name` subfolders), `[[dataset.subsets]]`, `dataset_name` (the `datasets`
library) and, with `with_prior_preservation`, `class_data_dir`. None of them: the shipped demo images.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, create_model, field_validator, model_validator

from .base import Section


MAX_TOKEN_LENGTHS = (75, 150, 225)  # kohya's --max_token_length choices (unset = 75)


class DatasetConfig(Section):
    # ------------------------------------------------------------------------------------------ sources
    instance_dir: str | None = Field(
        None,
        description=(
            "Folder of training images (png, jpg, jpeg, webp, bmp). No image source at all: the sample images "
            "loraforge ships (8 pictures of a toy robot with captions), for trying things."
        ),
    )
    instance_prompt: str | None = Field(
        None,
        description=(
            "Caption for every image that has none (DreamBooth style), e.g. `a photo of sks dog`. Required when "
            "some image has no caption and its subset has no `class_tokens`."
        ),
    )
    train_data_dir: str | None = Field(
        None,
        description=(
            "kohya folder layout: a folder of `N_name` subfolders (`10_sks dog`): each is a subset repeated N times "
            "whose uncaptioned images get the caption `name`. Subfolders without a leading number are skipped with "
            "a warning."
        ),
    )
    reg_data_dir: str | None = Field(
        None,
        description=(
            "Like `train_data_dir`, for regularisation images (`1_dog`): their loss is weighted by "
            "`prior_loss_weight`, and they are repeated so that an epoch holds as many of them as training images."
        ),
    )
    config_file: str | None = Field(
        None,
        description=(
            "A kohya dataset TOML (`[general]`, `[[datasets]]`, `[[datasets.subsets]]`); see docs/data.md. Its "
            "values win over this section's, which fill in what it leaves unset. Replaces the other image sources."
        ),
    )
    dataset_name: str | None = Field(
        None,
        description=(
            "A dataset of the `datasets` library: a hub id (`lambdalabs/naruto-blip-captions`) or a local "
            "ImageFolder (images + `metadata.jsonl`)."
        ),
    )
    dataset_config_name: str | None = Field(None, description="Configuration name of `dataset_name`, if it has several.")
    dataset_split: str = Field("train", description="Split of `dataset_name` to train on.")
    image_column: str = Field("image", description="Image column of `dataset_name`.")
    caption_column: str = Field(
        "auto",
        description=(
            "Caption column of `dataset_name` and of `metadata_file`. `auto` takes the first of `text`, `caption`, "
            "`prompt` present."
        ),
    )
    metadata_file: str = Field(
        "metadata.jsonl",
        description=(
            "ImageFolder metadata in an image folder (one JSON object a line with `file_name` and a caption "
            "column). Used when present; it wins over sidecar files."
        ),
    )
    caption_extension: str = Field(
        ".txt",
        description="Extension of sidecar caption files: `cat.png` is captioned by `cat.txt` (kohya's default is `.caption`).",
    )
    repeats: int = Field(
        1, ge=1, description="Each image (with its caption) appears this many times per epoch (kohya `num_repeats`)."
    )
    # ------------------------------------------------------------------------------------------ prior preservation
    with_prior_preservation: bool = Field(
        False,
        description=(
            "DreamBooth prior preservation: train on the class images of `class_data_dir` too (captioned "
            "`class_prompt`), their loss weighted by `prior_loss_weight`. Missing class images are generated first."
        ),
    )
    class_data_dir: str | None = Field(None, description="Folder of class images for `with_prior_preservation`.")
    class_prompt: str | None = Field(
        None, description="Prompt of the class images (`a photo of a dog`); their caption unless a sidecar file has one."
    )
    num_class_images: int = Field(
        100, ge=1, description="Class images wanted; missing ones are generated from `class_prompt`, extra ones unused."
    )
    prior_loss_weight: float = Field(
        1.0, ge=0.0, description="Loss weight of class and regularisation images (training images weigh 1)."
    )
    prior_batches: Literal["mixed", "paired"] = Field(
        "mixed",
        description=(
            "How class (and regularisation) images meet the training images. `mixed` (kohya's sd-scripts): they "
            "are repeated to as many per epoch as the training samples and shuffled into the batches with them; "
            "a batch's loss is the mean of its samples' losses, class ones weighted by `prior_loss_weight`. "
            "`paired` (diffusers' DreamBooth scripts): every batch holds `training.batch_size` training images "
            "and as many class images (twice the images per step), and its loss is the training images' mean "
            "loss + `prior_loss_weight` × the class images' mean loss; an epoch is diffusers' too: max(training "
            "samples, class images) pairs, the shorter list cycled. `paired` needs class or regularisation "
            "images, and a class image in every bucket that has training images."
        ),
    )
    # ------------------------------------------------------------------------------------------ images
    resolution: int | list[int] | None = Field(
        None,
        description=(
            "Training size in pixels: one number for a square (`512`) or `[width, height]` (`[512, 768]`; kohya's "
            "`\"512,768\"` is read too); with `enable_bucket`, w × h is the bucket area. Sides are multiples of 8, "
            "at least 64. Unset: the family's native square (512 SD 1.5, 768 SD 2.x, 1024 SDXL; 64 for the "
            "embedded tiny models)."
        ),
    )
    center_crop: bool = Field(
        True, description="Crop the center after resizing to cover the training size; false: a random crop."
    )
    random_flip: bool = Field(False, description="Flip images horizontally at random (p = 0.5); kohya `flip_aug`.")
    color_aug: bool = Field(
        False,
        description=(
            "kohya's colour augmentation: a third of the samples get either a hue shift of up to ±16° or kohya's "
            "brightness 'gamma' (pixel values 0-255 raised to a power in [0.95, 1.05]), drawn per sample. Not with "
            "`cache_latents`."
        ),
    )
    face_crop_aug_range: list[float] | None = Field(
        None,
        description=(
            "kohya's face crop: `[lo, hi]` (kohya's `\"2.0,4.0\"` is read too). An image whose file name ends in a "
            "face box, `name_cx_cy_w_h.png` (centre x, centre y, width, height in pixels, as kohya's "
            "`detect_face_rotate.py` writes them), is scaled so the training size is `lo`-`hi` times the face's longer "
            "side (drawn per sample, never enlarged past the original) and cropped around the face (anywhere that "
            "keeps the face inside when `center_crop` is false, else centred on it); other images are used as usual. "
            "Needs `enable_bucket = false`, as in kohya; not with `cache_latents`."
        ),
    )
    min_image_size: int | None = Field(
        None,
        ge=1,
        description="Images whose shorter side is below this are rejected. Unset: half of `resolution` (of its "
        "shorter side).",
    )
    skip_bad_images: bool = Field(
        False,
        description=(
            "Unreadable or too small images stop training before it starts, with the list of them. True: they are "
            "skipped (and listed) instead."
        ),
    )
    # ------------------------------------------------------------------------------------------ buckets
    enable_bucket: bool = Field(
        False,
        description=(
            "Aspect-ratio buckets: each image goes to the bucket (w × h of about the `resolution` area) closest to "
            "its aspect ratio, is resized to cover it and cropped; a batch holds one bucket."
        ),
    )
    min_bucket_reso: int | None = Field(
        None, ge=8, description="Smallest bucket side. Unset: half of `resolution` (its shorter side; kohya: 256)."
    )
    max_bucket_reso: int | None = Field(
        None, ge=8, description="Largest bucket side. Unset: twice `resolution` (its longer side; kohya: 1024)."
    )
    bucket_reso_steps: int = Field(
        64, ge=8, description="Bucket sides are multiples of this (a multiple of 8; 32 is common for SDXL)."
    )
    bucket_no_upscale: bool = Field(
        False,
        description=(
            "Never upscale: an image gets a bucket of its own size (shrunk to the `resolution` area if larger) "
            "rounded down to `bucket_reso_steps`; `min/max_bucket_reso` are then ignored."
        ),
    )
    # ------------------------------------------------------------------------------------------ captions
    alpha_mask: bool = Field(
        False,
        description=(
            "With `training.masked_loss`: each image's mask is its alpha channel (opaque = trained; kohya's "
            "`alpha_mask`); an image without one is trained everywhere."
        ),
    )
    mask_dir: str | None = Field(
        None,
        description=(
            "With `training.masked_loss`: a folder of mask images with the training images' file names (any image "
            "extension); white = trained, black = not (the red channel, as kohya's `conditioning_data_dir` masks). "
            "Each mask is scaled to its image, then cropped and flipped with it."
        ),
    )
    caption_prefix: str | None = Field(None, description="Text put before every caption (joined with a space).")
    caption_suffix: str | None = Field(None, description="Text put after every caption (joined with a space).")
    caption_dropout_rate: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description=(
            "Probability that a sample's caption is left empty (unconditional training: the empty prompt that "
            "classifier-free guidance samples against; kohya's `caption_dropout_rate`)."
        ),
    )
    caption_dropout_every_n_epochs: int = Field(
        0, ge=0, description="Empty every caption in every N-th epoch (epochs counted from 1). 0: never."
    )
    caption_tag_dropout_rate: float = Field(
        0.0, ge=0.0, le=1.0, description="Probability that each tag (not kept by `keep_tokens`) is dropped."
    )
    enable_wildcard: bool = Field(
        False,
        description=(
            "`{a|b|c}` in a caption becomes one of a, b, c at random each step (`{{`/`}}` for literal braces), and "
            "a caption file of several lines gives one random line. Off: only the first line is used."
        ),
    )
    keep_tokens: int = Field(
        0, ge=0, description="The first N tags stay in front, never shuffled or dropped (with `shuffle_caption`)."
    )
    keep_tokens_separator: str | None = Field(
        None,
        description=(
            "A marker (`|||`) that ends the fixed part instead of `keep_tokens`: `a, b ||| c, d ||| e` keeps "
            "`a, b` first and `e` last and shuffles/drops only `c, d`. The marker never reaches the text encoder."
        ),
    )
    max_token_length: int = Field(
        75,
        description=(
            "Caption tokens the text encoders read (kohya `--max_token_length`). 75: one 77-token window (start "
            "and end tokens included), longer captions are cut. 150 / 225: kohya's chunked prompts: the caption "
            "is split into 2 / 3 windows of 75 tokens, each encoded with its own start and end tokens, and the "
            "UNet is conditioned on the 152 / 227 states (first start token, every window's 75 tokens, last end "
            "token); SDXL's pooled embedding is the first window's. Samples are still prompted with 75 tokens."
        ),
    )
    shuffle_caption: bool = Field(False, description="Shuffle the tags of each caption every step.")
    caption_separator: str = Field(",", description="What separates tags, for shuffling and dropping.")
    secondary_separator: str | None = Field(
        None,
        description="A separator (`;;;`) inside a tag that is kept together, replaced by `caption_separator` at the end.",
    )
    # ------------------------------------------------------------------------------------------ caches
    cache_latents: bool = Field(
        False,
        description=(
            "Encode every image with the VAE once before training and keep the latent distributions in memory. "
            "Needs `center_crop`; with `random_flip` both orientations are cached."
        ),
    )
    cache_latents_to_disk: bool = Field(
        False,
        description=(
            "Like `cache_latents`, kept on disk (safetensors in the VAE's precision, one file per image, bucket, "
            "crop, flip and VAE) and reused by later runs; a changed image or setting gets a new entry."
        ),
    )
    cache_text_encoder_outputs: bool = Field(
        False,
        description=(
            "Encode every caption once with the frozen text encoder(s) and keep the outputs in memory. Not with "
            "captions that change per step (shuffle, dropout, wildcards) nor a trained text encoder."
        ),
    )
    cache_text_encoder_outputs_to_disk: bool = Field(
        False, description="Like `cache_text_encoder_outputs`, kept on disk and reused by later runs."
    )
    vae_batch_size: int = Field(1, ge=1, description="Images per VAE call when caching latents.")
    cache_dir: str | None = Field(
        None,
        description=(
            "Folder of the disk caches. Unset: `.loraforge_cache/` inside each image folder (or in the loraforge "
            "home for `dataset_name` images without a local file)."
        ),
    )
    # ------------------------------------------------------------------------------------------ subsets
    subsets: list["SubsetConfig"] = Field(
        default_factory=list,
        description="Folders of images with their own settings, as `[[dataset.subsets]]` tables (see below).",
    )

    @field_validator("face_crop_aug_range", mode="before")
    @classmethod
    def _face_range_form(cls, value):
        return face_range(value)

    @field_validator("resolution", mode="before")
    @classmethod
    def _resolution_form(cls, value):
        return None if value is None else parse_resolution(value)

    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height) of `resolution`; None when unset."""
        return None if self.resolution is None else pixel_size(self.resolution)

    @model_validator(mode="after")
    def _check(self) -> "DatasetConfig":
        problems = []
        if self.config_file:
            others = [k for k in ("instance_dir", "train_data_dir", "reg_data_dir", "dataset_name") if getattr(self, k)]
            others += ["subsets"] if self.subsets else []
            if others:
                problems.append(
                    f"dataset.config_file describes every image folder; remove {', '.join('dataset.' + o for o in others)}"
                    " or list them in the config file"
                )
        if self.with_prior_preservation:
            missing = [k for k in ("class_data_dir", "class_prompt") if not getattr(self, k)]
            if missing:
                problems.append(
                    f"dataset.with_prior_preservation needs {' and '.join('dataset.' + m for m in missing)}"
                )
        elif self.class_data_dir or self.class_prompt:
            problems.append(
                "dataset.class_data_dir / dataset.class_prompt are only used with dataset.with_prior_preservation = "
                "true; set it, or remove them"
            )
        if self.prior_batches == "paired" and not (self.with_prior_preservation or self.reg_data_dir
                                                   or self.config_file or any(s.is_reg for s in self.subsets)):
            problems.append(
                'dataset.prior_batches = "paired" puts class images in every batch, but there are none: set '
                "dataset.with_prior_preservation = true (with class_data_dir and class_prompt) or add "
                "regularisation images (dataset.reg_data_dir, or a subset with is_reg = true), or set "
                'prior_batches = "mixed"'
            )
        if self.resolution is not None and self.enable_bucket and not self.bucket_no_upscale:
            steps = self.bucket_reso_steps
            problems += bucket_problems(self.resolution, self.min_bucket_reso, self.max_bucket_reso, steps, "dataset.")
        if self.max_token_length not in MAX_TOKEN_LENGTHS:
            problems.append(f"dataset.max_token_length = {self.max_token_length}: use one of "
                            f"{', '.join(map(str, MAX_TOKEN_LENGTHS))} (one, two or three 75-token windows, as kohya)")
        if self.bucket_reso_steps % 8:
            problems.append(f"dataset.bucket_reso_steps = {self.bucket_reso_steps} is not a multiple of 8")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def face_range(value) -> list[float] | None:
    """`face_crop_aug_range` as `[lo, hi]` with 0 < lo <= hi, from a list or kohya's `"2.0,4.0"`."""
    if value is None:
        return None
    parts = [p for p in value.split(",") if p.strip()] if isinstance(value, str) else value
    try:
        lo, hi = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r}: expected two numbers [lo, hi] (kohya: \"2.0,4.0\")") from None
    if not 0 < lo <= hi:
        raise ValueError(f"{value!r}: expected 0 < lo <= hi (the training size is lo to hi times the face's size)")
    return [lo, hi]


def pixel_size(resolution) -> tuple[int, int]:
    """(width, height) of a resolution: one size (a square) or a (width, height) pair."""
    if isinstance(resolution, int):
        return (resolution, resolution)
    width, height = resolution
    return (int(width), int(height))


def size_text(resolution) -> str:
    """`512 px` for a square, `512 × 768 px (width × height)` otherwise."""
    width, height = pixel_size(resolution)
    return f"{width} px" if width == height else f"{width} × {height} px (width × height)"


def parse_resolution(value) -> int | list[int]:
    """`512`, `[512, 768]` or kohya's `"512,768"` as one size or [width, height]; ValueError says the fix."""
    items = value.split(",") if isinstance(value, str) else value
    items = list(items) if isinstance(items, (list, tuple)) else [items]
    try:
        sides = [int(str(v).strip()) for v in items]
    except ValueError:
        sides = []
    if len(sides) not in (1, 2):
        raise ValueError("write one size for a square (512) or two, [width, height] ([512, 768])")
    problems = []
    for side in dict.fromkeys(sides):
        if side < 64:
            problems.append(f"a side of {side} px is too small; use sides >= 64")
        elif side % 8:
            problems.append(f"{side} is not a multiple of 8; the VAE needs one (try {side // 8 * 8})")
    if problems:
        raise ValueError("; ".join(problems))
    return sides[0] if len(sides) == 1 else sides


def default_bucket_limits(resolution, min_reso: int | None, max_reso: int | None, steps: int) -> tuple[int, int]:
    """`min/max_bucket_reso`, with unset ones derived from the resolution (half its shorter side and twice its
    longer side, on the step grid)."""
    res = pixel_size(resolution)
    lo = min_reso if min_reso is not None else max(steps, min(res) // 2 // steps * steps)
    hi = max_reso if max_reso is not None else max(res) * 2 // steps * steps
    return lo, hi


def bucket_problems(resolution, min_reso, max_reso, steps, prefix="") -> list[str]:
    """What is wrong with a bucket setting (kohya's rules): sides on the step grid and `min <= resolution <= max`."""
    res = pixel_size(resolution)
    lo, hi = default_bucket_limits(res, min_reso, max_reso, steps)
    out = []
    for name, v in (("min_bucket_reso", lo), ("max_bucket_reso", hi)):
        if v % steps:
            out.append(f"{prefix}{name} = {v} is not a multiple of {prefix}bucket_reso_steps = {steps}")
    if lo > min(res):
        out.append(f"{prefix}min_bucket_reso = {lo} is larger than the resolution {min(res)}; lower it")
    if hi < max(res):
        out.append(f"{prefix}max_bucket_reso = {hi} is smaller than the resolution {max(res)}; raise it")
    return out


# Options a subset can set for itself; unset, it takes the `[dataset]` value.
SUBSET_OVERRIDABLE = (
    "caption_extension", "center_crop", "random_flip", "color_aug", "face_crop_aug_range",
    "caption_prefix", "caption_suffix", "caption_dropout_rate", "caption_dropout_every_n_epochs",
    "caption_tag_dropout_rate", "enable_wildcard", "keep_tokens", "keep_tokens_separator", "shuffle_caption",
    "caption_separator", "secondary_separator",
)


def _optional(name: str):
    f = DatasetConfig.model_fields[name]
    bounds = {a: getattr(m, a) for m in f.metadata for a in ("ge", "gt", "le", "lt") if getattr(m, a, None) is not None}
    return (f.annotation | None, Field(None, description=f"This subset's `{name}`; unset: the `[dataset]` value.", **bounds))


ZERO_REPEATS = (
    "a subset with 0 repeats would never be trained on. For class (regularisation) images set is_reg = true: "
    "they are repeated to as many per epoch as the training images and weighted by prior_loss_weight, as kohya's "
    "reg subsets; to leave the folder out, remove the subset"
)


def _check_repeats(value: int | None) -> int | None:
    if value is not None and value < 1:
        raise ValueError(f"num_repeats = {value}: {ZERO_REPEATS}")
    return value


SubsetConfig = create_model(
    "SubsetConfig",
    __base__=Section,
    __doc__="`[[dataset.subsets]]`: one folder of images with its own repeats, captions and flags.",
    image_dir=(str, Field(..., description="Folder of the subset's images.")),
    num_repeats=(
        int | None,
        Field(
            None,
            description=(
                "Times each image appears per epoch (at least 1; for class images that only regularise, set "
                "`is_reg` instead of 0). Unset: `[dataset].repeats`."
            ),
        ),
    ),
    class_tokens=(
        str | None,
        Field(None, description="Caption of images without a caption file. Unset: `[dataset].instance_prompt`."),
    ),
    is_reg=(
        bool,
        Field(False, description="Regularisation images: loss weighted by `prior_loss_weight`, balanced in number."),
    ),
    **{name: _optional(name) for name in SUBSET_OVERRIDABLE},
    __validators__={
        "_repeats": field_validator("num_repeats")(lambda cls, v: _check_repeats(v)),
        "_face_range": field_validator("face_crop_aug_range", mode="before")(lambda cls, v: face_range(v)),
    },
)
DatasetConfig.model_rebuild()
