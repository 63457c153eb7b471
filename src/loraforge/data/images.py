"""Checking, loading and transforming images (PIL + numpy; torchvision is deliberately not a dependency)."""

from __future__ import annotations

import io
import math
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


def _open(path: Path, data: bytes | None = None):
    """A PIL image from a file, or from the bytes of an image held in memory (`datasets` rows)."""
    return Image.open(io.BytesIO(data) if data is not None else path)


def file_bytes(path: Path, data: bytes | None = None) -> bytes:
    return data if data is not None else Path(path).read_bytes()


def probe_size(path: Path, data: bytes | None = None) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied), from the header only."""
    with _open(path, data) as im:
        w, h = im.size
        if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90° or 270°
            w, h = h, w
    return w, h


def check_image(path: Path, min_size: int, data: bytes | None = None) -> ImageProblem | None:
    """Open and fully decode the image; None if it is usable."""
    try:
        with _open(path, data) as im:
            im.load()
            w, h = ImageOps.exif_transpose(im).size
    except Exception as e:  # PIL raises many kinds for broken files
        return ImageProblem(path, f"unreadable ({type(e).__name__}: {e})")
    if min(w, h) < min_size:
        return ImageProblem(path, f"too small: {w}×{h}, the shorter side must be at least {min_size} px")
    return None


def _high_depth_to_8bit(im: Image.Image) -> Image.Image:
    """A 16-bit grayscale image ("I;16*", or "I", which Pillow also uses for 16-bit PNGs) as 8-bit "L": 0-65535
    scaled to 0-255 (Pillow's own `convert` clips every value above 255 to white)."""
    arr = np.asarray(im).astype(np.float64)
    return Image.fromarray(np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8), mode="L")


def load_rgb(path: Path, data: bytes | None = None) -> Image.Image:
    with _open(path, data) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode.startswith("I"):
            im = _high_depth_to_8bit(im)
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            return Image.alpha_composite(bg, im).convert("RGB")
        return im.convert("RGB")


def cover_size(image: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """(w, h) of the image scaled (keeping its aspect ratio) to just cover `size` (w, h)."""
    (w, h), (tw, th) = image, size
    scale = max(tw / w, th / h)
    return max(tw, round(w * scale)), max(th, round(h * scale))


def center_crop_offset(image: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of the center crop `resize_and_crop` takes, from the sizes alone (no decoding)."""
    nw, nh = cover_size(image, size)
    return (nh - size[1]) // 2, (nw - size[0]) // 2


def resize_and_crop(
    img: Image.Image, size: tuple[int, int], center: bool, rng: np.random.Generator
) -> tuple[Image.Image, tuple[int, int]]:
    """Scale so the image covers `size` (w, h), then crop to it. Returns the crop and its (top, left) offset in the
    scaled image (what SDXL's crop conditioning wants)."""
    tw, th = size
    w, h = img.size
    nw, nh = cover_size((w, h), size)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.LANCZOS)
    if center:
        top, left = (nh - th) // 2, (nw - tw) // 2
    else:
        top = int(rng.integers(0, nh - th + 1))
        left = int(rng.integers(0, nw - tw + 1))
    return img.crop((left, top, left + tw, top + th)), (top, left)


def face_box(path: Path | str | None) -> tuple[int, int, int, int] | None:
    """kohya's face box from a file name `name_cx_cy_w_h.ext` (what its `detect_face_rotate.py` writes): (centre x,
    centre y, width, height) in pixels of the file; None when the stem does not end in four such numbers."""
    if path is None:
        return None
    parts = Path(path).stem.split("_")
    if len(parts) < 5:
        return None
    try:
        cx, cy, w, h = (int(p) for p in parts[-4:])
    except ValueError:
        return None
    return (cx, cy, w, h) if cx >= 0 and cy >= 0 and w > 0 and h > 0 else None


def _face_window(centre: float, extent: float, length: int, target: int, rng, anywhere: bool) -> int:
    """Start of a `target`-long window on an axis of `length` px around a face spanning centre ± extent / 2: a random
    start that keeps the face inside (`anywhere`), else centred on the face; always inside the image."""
    last_start = length - target
    if anywhere:
        first = max(0, math.ceil(centre + extent / 2 - target))
        last = min(last_start, math.floor(centre - extent / 2))
        if first <= last:
            return int(rng.integers(first, last + 1))
    return min(max(0, round(centre - target / 2)), last_start)


def face_crop(
    img: Image.Image, face: tuple[int, int, int, int], size: tuple[int, int], scale_range, rng: np.random.Generator,
    anywhere: bool,
) -> tuple[Image.Image, tuple[int, int]]:
    """kohya's `face_crop_aug_range` (train_util.py `crop_target`): scale the image so that the shorter side of
    `size` (w, h) is between `lo` and `hi` times the face's longer side (a uniform draw of the scale; never enlarged
    past the original, never smaller than covering `size`), then crop `size` around the face (`_face_window`).
    Returns the crop and its (top, left) offset in the scaled image."""
    tw, th = size
    w, h = img.size
    cx, cy, fw, fh = face
    lo, hi = scale_range
    side, short = max(fw, fh), min(tw, th)
    cover = max(tw / w, th / h)
    smallest = max(cover, min(1.0, short / (side * hi)))
    largest = max(smallest, min(1.0, short / (side * lo)))
    scale = float(rng.uniform(smallest, largest)) if largest > smallest else smallest
    nw, nh = max(tw, round(w * scale)), max(th, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.LANCZOS)
    sx, sy = nw / w, nh / h
    left = _face_window(cx * sx, fw * sx, nw, tw, rng, anywhere)
    top = _face_window(cy * sy, fh * sy, nh, th, rng, anywhere)
    return img.crop((left, top, left + tw, top + th)), (top, left)


def color_aug(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """kohya's `color_aug` (train_util.py `AugHelper.color_aug`): with probability 0.33, half the time a hue shift of
    up to 8 of OpenCV's 180 hue steps (±16°), otherwise kohya's "gamma": the 0-255 pixel values raised to a power in
    [0.95, 1.05] (a brightness change, as kohya computes it). Pillow's HSV (hue 0-255) stands in for OpenCV's."""
    if rng.random() > 0.33:
        return img
    if rng.random() > 0.5:
        shift = rng.uniform(-8, 8) % 180  # kohya: a negative shift + 180
        hsv = np.asarray(img.convert("HSV")).copy()
        hsv[..., 0] = ((hsv[..., 0] + shift * 256 / 180) % 256).astype(np.uint8)
        return Image.fromarray(hsv, "HSV").convert("RGB")
    gamma = rng.uniform(0.95, 1.05)
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) ** gamma, 0, 255).astype(np.uint8), "RGB")


def to_tensor(img: Image.Image):
    """PIL RGB → float tensor [3, H, W] in [-1, 1]."""
    import torch

    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())
