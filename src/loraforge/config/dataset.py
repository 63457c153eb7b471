"""`[dataset]`: the training images and their captions."""

from __future__ import annotations

from pydantic import Field

from .base import Section


class DatasetConfig(Section):
    instance_dir: str | None = Field(
        None,
        description=(
            "Folder of training images (png, jpg, jpeg, webp, bmp). Unset: the sample images loraforge ships "
            "(8 pictures of a toy robot with captions), for trying things."
        ),
    )
    instance_prompt: str | None = Field(
        None,
        description=(
            "Caption for every image that has none (DreamBooth style), e.g. `a photo of sks dog`. Required when "
            "some image has no caption."
        ),
    )
    caption_extension: str = Field(
        ".txt", description="Extension of sidecar caption files: `cat.png` is captioned by `cat.txt`."
    )
    metadata_file: str = Field(
        "metadata.jsonl",
        description=(
            "ImageFolder metadata in `instance_dir` (one JSON object a line with `file_name` and a caption column). "
            "Used when present; it wins over sidecar files."
        ),
    )
    caption_column: str = Field(
        "auto",
        description="Caption column of `metadata_file`. `auto` takes the first of `text`, `caption`, `prompt` present.",
    )
    repeats: int = Field(1, ge=1, description="Each image (with its caption) appears this many times per epoch.")
    resolution: int | None = Field(
        None,
        ge=64,
        description=(
            "Training size in pixels (square), a multiple of 8. Unset: the family's native size "
            "(512 SD 1.5, 768 SD 2.x, 1024 SDXL; 64 for the embedded tiny models)."
        ),
    )
    center_crop: bool = Field(
        True, description="Crop the center after resizing the short side to `resolution`; false: a random crop."
    )
    random_flip: bool = Field(False, description="Flip images horizontally at random (p = 0.5).")
    min_image_size: int | None = Field(
        None,
        ge=1,
        description="Images whose shorter side is below this are rejected. Unset: half of `resolution`.",
    )
    skip_bad_images: bool = Field(
        False,
        description=(
            "Unreadable or too small images stop training before it starts, with the list of them. True: they are "
            "skipped (and listed) instead."
        ),
    )
