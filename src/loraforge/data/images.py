"""Checking, loading and transforming images (PIL + numpy; torchvision is deliberately not a dependency)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


@dataclass(frozen=True)
class ImageProblem:
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def check_image(path: Path, min_size: int) -> ImageProblem | None:
    """Open and fully decode the image; None if it is usable."""
    try:
        with Image.open(path) as im:
            im.load()
            w, h = ImageOps.exif_transpose(im).size
    except Exception as e:  # PIL raises many kinds for broken files
        return ImageProblem(path, f"unreadable ({type(e).__name__}: {e})")
    if min(w, h) < min_size:
        return ImageProblem(path, f"too small: {w}×{h}, the shorter side must be at least {min_size} px")
    return None


def load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            return Image.alpha_composite(bg, im).convert("RGB")
        return im.convert("RGB")


def resize_and_crop(
    img: Image.Image, size: tuple[int, int], center: bool, rng: np.random.Generator
) -> tuple[Image.Image, tuple[int, int]]:
    """Scale so the image covers `size` (w, h), then crop to it. Returns the crop and its (top, left) offset in the
    scaled image (what SDXL's crop conditioning wants)."""
    tw, th = size
    w, h = img.size
    scale = max(tw / w, th / h)
    nw, nh = max(tw, round(w * scale)), max(th, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.LANCZOS)
    if center:
        top, left = (nh - th) // 2, (nw - tw) // 2
    else:
        top = int(rng.integers(0, nh - th + 1))
        left = int(rng.integers(0, nw - tw + 1))
    return img.crop((left, top, left + tw, top + th)), (top, left)


def to_tensor(img: Image.Image):
    """PIL RGB → float tensor [3, H, W] in [-1, 1]."""
    import torch

    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())
