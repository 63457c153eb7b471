"""The training dataset: items × repeats, with per-sample randomness derived from (seed, epoch, index) so that a
resumed run sees exactly the crops and flips an uninterrupted run would have seen."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .images import load_rgb, resize_and_crop, to_tensor
from .sources import ImageItem


@dataclass
class Example:
    pixel_values: torch.Tensor
    caption: str
    original_size: tuple[int, int]  # (h, w) before resizing
    crop_top_left: tuple[int, int]


class ImageCaptionDataset(torch.utils.data.Dataset):
    def __init__(
        self,
        items: list[ImageItem],
        resolution: int,
        center_crop: bool = True,
        random_flip: bool = False,
        repeats: int = 1,
        seed: int = 0,
    ):
        self.items = items
        self.resolution = resolution
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.repeats = repeats
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items) * self.repeats

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def __getitem__(self, index: int) -> Example:
        item = self.items[index % len(self.items)]
        rng = self.rng(index)
        img = load_rgb(item.path)
        original = (img.height, img.width)
        img, crop = resize_and_crop(img, (self.resolution, self.resolution), self.center_crop, rng)
        if self.random_flip and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return Example(to_tensor(img), item.caption, original, crop)


def collate(examples: list[Example]) -> dict:
    return {
        "pixel_values": torch.stack([e.pixel_values for e in examples]),
        "captions": [e.caption for e in examples],
        "original_sizes": [e.original_size for e in examples],
        "crops_top_left": [e.crop_top_left for e in examples],
    }


class EpochShuffleSampler(torch.utils.data.Sampler):
    """A fresh permutation each epoch from (seed, epoch): reproducible, and resumable mid-epoch."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())
