"""Loss masks (`training.masked_loss`): one per image, from its alpha channel (`dataset.alpha_mask`) or from a
folder of masks with the images' file names (`dataset.mask_dir`, the red channel as kohya reads it), scaled to the
image, then cropped and flipped exactly as the image is, so mask and pixels stay aligned in every bucket."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import DataError
from .images import cover_size
from .sources import IMAGE_EXTENSIONS


@dataclass
class MaskSource:
    mask_dir: Path | None  # masks with the images' file names; None: the alpha channel
    reg_images: bool = False  # mask the regularisation / class images too

    @classmethod
    def from_config(cls, cfg) -> "MaskSource | None":
        t, d = cfg.training, cfg.dataset
        if not t.masked_loss:
            return None
        return cls(Path(d.mask_dir).expanduser() if d.mask_dir else None, t.masked_loss_reg_images)

    def check(self, items, subsets) -> None:
        """Refuse, before training, an image whose mask file is missing from `mask_dir`."""
        if self.mask_dir is None:
            return
        if not self.mask_dir.is_dir():
            raise DataError(f"dataset.mask_dir = {str(self.mask_dir)!r}: no such folder")
        for it in items:
            if self.reg_images or not subsets[it.subset].is_reg:
                self.mask_file(Path(it.path))

    def mask_file(self, image: Path) -> Path:
        for ext in IMAGE_EXTENSIONS:
            for candidate in (self.mask_dir / (image.stem + ext), self.mask_dir / (image.stem + ext.upper())):
                if candidate.is_file():
                    return candidate
        raise DataError(f"dataset.mask_dir = {str(self.mask_dir)!r} has no mask for {image} (a mask is an image "
                        f"named {image.stem}.png or another image extension); add it, or turn training.masked_loss "
                        "off")

    def load(self, path: Path, data: bytes | None, size: tuple[int, int]) -> Image.Image:
        """The mask of the image at `path`, as an 8-bit image of `size` (w, h), the image's displayed size."""
        if self.mask_dir is not None:
            with Image.open(self.mask_file(Path(path))) as im:
                mask = ImageOps.exif_transpose(im).convert("RGB").getchannel("R")
        else:
            with Image.open(path if data is None else io.BytesIO(data)) as im:
                im = ImageOps.exif_transpose(im)
                has_alpha = im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info)
                mask = im.convert("RGBA").getchannel("A") if has_alpha else Image.new("L", im.size, 255)
        return mask if mask.size == size else mask.resize(size, Image.Resampling.BILINEAR)

    def render(self, path: Path, data: bytes | None, is_reg: bool, size: tuple[int, int], bucket: tuple[int, int],
               crop_top_left: tuple[int, int], flip: bool) -> torch.Tensor:
        """The mask as the training pixels see it, [1, H, W] in [0, 1]: scaled to cover the bucket (w, h), cropped
        at the image's (top, left), flipped with it. All ones for a regularisation image unless those are masked."""
        bw, bh = bucket
        if is_reg and not self.reg_images:
            return torch.ones((1, bh, bw))
        return transform_mask(self.load(path, data, size), bucket, crop_top_left, flip)


def transform_mask(mask: Image.Image, bucket: tuple[int, int], crop_top_left: tuple[int, int],
                   flip: bool) -> torch.Tensor:
    """`resize_and_crop`'s geometry applied to a mask: cover the bucket, crop at (top, left), flip."""
    bw, bh = bucket
    nw, nh = cover_size(mask.size, bucket)
    if (nw, nh) != mask.size:
        mask = mask.resize((nw, nh), Image.Resampling.BILINEAR)
    top, left = crop_top_left
    mask = mask.crop((left, top, left + bw, top + bh))
    if flip:
        mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None]
