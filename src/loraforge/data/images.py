"""Checking, loading and transforming images (PIL + numpy; torchvision is deliberately not a dependency)."""

from __future__ import annotations

import io
import math
import struct
import zlib
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


def _png_exif(fp, check: bool) -> bytes | None:
    """The EXIF chunk of a PNG (anywhere in the file: Pillow's own `getexif` decodes the whole image to reach one
    after the pixel data), walking the chunks without decoding them; with `check`, every chunk's checksum is
    verified and a truncated file raises OSError (what `Image.verify` checks)."""
    fp.seek(8)  # the signature
    exif = None
    while True:
        head = fp.read(8)
        if len(head) < 8:
            raise OSError("truncated PNG file (no IEND chunk)")
        length, kind = struct.unpack(">I4s", head)
        if kind == b"IEND":
            return exif
        if kind == b"eXIf" or check:
            body, crc = fp.read(length), fp.read(4)
            if len(body) < length or len(crc) < 4:
                raise OSError(f"truncated PNG file (in a {kind.decode('latin-1')} chunk)")
            if check and zlib.crc32(kind + body) != struct.unpack(">I", crc)[0]:
                raise OSError(f"broken PNG file (bad checksum of a {kind.decode('latin-1')} chunk)")
            if kind == b"eXIf":
                exif = b"Exif\x00\x00" + body
        else:
            fp.seek(length + 4, io.SEEK_CUR)


def _displayed_size(im: Image.Image, check: bool = False) -> tuple[int, int]:
    """(width, height) of an opened image as displayed (EXIF orientation applied), without decoding it."""
    if im.format == "PNG":
        exif = _png_exif(im.fp, check) if check or "exif" not in im.info else im.info["exif"]
        tags = Image.Exif()
        if exif:
            tags.load(exif)
        orientation = tags.get(0x0112, 1)
    else:
        orientation = im.getexif().get(0x0112, 1)
    w, h = im.size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)  # rotated by 90° or 270°


def probe_size(path: Path, data: bytes | None = None) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied), from the header only."""
    with _open(path, data) as im:
        return _displayed_size(im)


def check_image(path: Path, min_size: int, data: bytes | None = None) -> ImageProblem | None:
    """Whether the image is usable (None) without decoding it at full size: the header gives the size; a PNG's
    chunks are read with their checksums, a JPEG is decoded at 1/8 scale (which still reads every byte of its
    compressed data, so a truncated or corrupt file fails here); other formats are decoded in full."""
    try:
        with _open(path, data) as im:
            w, h = _displayed_size(im, check=True)
            if im.format == "JPEG":
                im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
            if im.format != "PNG":
                im.load()
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
    """PIL RGB → float tensor [3, H, W] in [-1, 1], in one float32 array: the uint8 pixels are converted while
    transposed into it, then scaled in place."""
    import torch

    out = np.empty((3, img.height, img.width), dtype=np.float32)
    np.copyto(out, np.asarray(img).transpose(2, 0, 1))
    out /= 127.5
    out -= 1.0
    return torch.from_numpy(out)
