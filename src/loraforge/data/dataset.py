"""The training dataset: items × repeats (regularisation images balanced against the training images, or paired
with them as diffusers does), each in its aspect bucket, with per-sample randomness derived from (seed, epoch,
index) so that a resumed run sees exactly the crops, flips and captions an uninterrupted run would have seen.

A sample is addressed by `index` or by `(epoch, index)` (what `BucketBatchSampler` yields, so that worker
processes started in an earlier epoch still know the current one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..config.dataset import pixel_size
from .buckets import BucketManager, BucketSettings
from .captions import CaptionOptions, process_caption
from ..errors import DataError
from .images import (
    center_crop_offset, color_aug, cover_size, face_box, face_crop, load_rgb, probe_size, resize_and_crop, to_tensor,
)
from .sources import ImageItem
from .subsets import Group, Subset


# Decoded images kept per process (uint8, scaled to cover their bucket): each image is decoded and resized once,
# not every step; past this many bytes the rest are decoded on every use.
DECODED_CACHE_BYTES = 2 * 2**30


@dataclass
class Example:
    pixel_values: torch.Tensor | None  # None when the latents come from the cache
    caption: str
    original_size: tuple[int, int]  # (h, w) of the file
    crop_top_left: tuple[int, int]  # (top, left) in the resized image
    target_size: tuple[int, int] = (0, 0)  # (h, w) of the bucket
    is_reg: bool = False
    loss_weight: float = 1.0
    latent_seed: int = 0  # seeds the sample drawn from the VAE's latent distribution
    noise_seed: int = 0  # seeds the sample's training noise and timestep
    latents: torch.Tensor | None = None  # scaled, from the latent cache
    prompt_embeds: torch.Tensor | None = None  # from the text-encoder cache
    pooled: torch.Tensor | None = None
    mask: torch.Tensor | None = None  # [1, H, W] in [0, 1], with `training.masked_loss`


def balanced_repeats(items: list[ImageItem], subsets: list[Subset]) -> list[int]:
    """Times each item appears per epoch: its subset's `num_repeats`; regularisation items are registered
    round-robin (then given one more repeat each, round-robin) until there are as many of them as training samples,
    as sd-scripts does, so unused regularisation images get 0."""
    counts = [0] * len(items)
    train = 0
    for i, it in enumerate(items):
        if not subsets[it.subset].is_reg:
            counts[i] = subsets[it.subset].num_repeats
            train += counts[i]
    reg = [i for i, it in enumerate(items) if subsets[it.subset].is_reg]
    n, first = 0, True
    while reg and n < train:
        for i in reg:
            add = subsets[items[i].subset].num_repeats if first else 1
            counts[i] += add
            n += add
            if n >= train:
                break
        first = False
    return counts


PAIRED_HOW = 'dataset.prior_batches = "paired" puts class images in every batch'


def paired_index(items: list[ImageItem], subsets: list[Subset], keys: list) -> list[int]:
    """The item of every sample with `dataset.prior_batches = "paired"`, as diffusers' DreamBooth dataset pairs them:
    per batch key (`keys[i]`: item i's group and bucket) the training samples (each item × its subset's repeats)
    and the class samples (each regularisation item × its repeats) are paired in turn, max(training, class) pairs,
    the shorter list cycled (diffusers: length max(instance, class), image `i % n`). Pair k is samples 2k (training)
    and 2k + 1 (class)."""
    train: dict = {}
    reg: dict = {}
    for i, it in enumerate(items):
        sub = subsets[it.subset]
        (reg if sub.is_reg else train).setdefault(keys[i], []).extend([i] * sub.num_repeats)
    if not reg:
        raise DataError(f"{PAIRED_HOW}, but the dataset has none: turn on dataset.with_prior_preservation, add "
                        'regularisation images (is_reg), or set dataset.prior_batches = "mixed"')
    lacking = [k for k in train if k not in reg]
    if lacking:
        raise DataError(
            f"{PAIRED_HOW}, and a batch holds one bucket, but some buckets have training images and no class "
            'images; turn dataset.enable_bucket off, or set dataset.prior_batches = "mixed"',
            [f"bucket {w}x{h}" + (f" of group {g}" if g else "") + f": {len(train[(g, (w, h))])} training samples"
             for g, (w, h) in lacking],
        )
    index: list[int] = []
    for key in sorted(train, key=repr):
        t, r = train[key], reg[key]
        for k in range(max(len(t), len(r))):
            index += [t[k % len(t)], r[k % len(r)]]
    return index


class ImageCaptionDataset(torch.utils.data.Dataset):
    def __init__(
        self,
        items: list[ImageItem],
        resolution: int | tuple[int, int] = 512,
        center_crop: bool = True,
        random_flip: bool = False,
        repeats: int = 1,
        seed: int = 0,
        *,
        subsets: list[Subset] | None = None,
        groups: list[Group] | None = None,
        prior_loss_weight: float = 1.0,
        text_replacements: dict[str, str] | None = None,
        prior_batches: str = "mixed",
    ):
        res = pixel_size(resolution)
        self.items = items
        self.resolution = resolution
        self.repeats = repeats
        self.seed = seed
        self.epoch = 0
        self.subsets = subsets or [
            Subset("items", None, repeats, False, CaptionOptions(), random_flip, not center_crop)
        ]
        self.groups = groups or [Group(BucketSettings(res), 1)]
        self.prior_loss_weight = prior_loss_weight
        self.text_replacements = dict(text_replacements or {})
        self.managers = [BucketManager(g.buckets) for g in self.groups]
        self._sizes: dict[int, tuple[int, int]] = {}
        self.item_buckets = [self._bucket(i) for i in range(len(items))]
        self.paired = prior_batches == "paired"
        if self.paired:
            item_keys = [(self.subset_of(i).group, self.item_buckets[i]) for i in range(len(items))]
            self.index = paired_index(items, self.subsets, item_keys)
        else:
            self.index = [i for i, n in enumerate(balanced_repeats(items, self.subsets)) for _ in range(n)]
        self.latent_cache = None  # set by `data.cache.fill_caches`
        self.text_cache = None
        self.decoded: dict[int, tuple[Image.Image, tuple[int, int]]] = {}  # item → (cover image, original (h, w))
        self.decoded_bytes = 0
        self.decode_count = 0  # files decoded (what the cache saves)
        self.masks = None  # a `masks.MaskSource`, set by `data.build` with training.masked_loss

    # ------------------------------------------------------------------------------------------ items
    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index)

    def subset_of(self, item_index: int) -> Subset:
        return self.subsets[self.items[item_index].subset]

    def size_of(self, item_index: int) -> tuple[int, int]:
        """(w, h) of an item's image as displayed (header only, remembered)."""
        if item_index not in self._sizes:
            it = self.items[item_index]
            self._sizes[item_index] = probe_size(it.path, it.data)
        return self._sizes[item_index]

    def _bucket(self, item_index: int) -> tuple[int, int]:
        group = self.subset_of(item_index).group
        manager = self.managers[group]
        if not manager.s.enable:
            return manager.s.resolution
        return manager.select(*self.size_of(item_index))

    def bucket_keys(self) -> list[tuple[int, tuple[int, int]]]:
        """(group, bucket (w, h)) of every sample (of every pair when paired): what `BucketBatchSampler` groups by."""
        index = self.index[::2] if self.paired else self.index
        return [(self.subset_of(i).group, self.item_buckets[i]) for i in index]

    def batch_sizes(self) -> dict[int, int]:
        return {g: grp.batch_size for g, grp in enumerate(self.groups)}

    # ------------------------------------------------------------------------------------------ randomness
    def rng(self, index: int, epoch: int | None = None, stream: int | None = None) -> np.random.Generator:
        key = [self.seed, self.epoch if epoch is None else epoch, index]
        return np.random.default_rng(key + ([stream] if stream is not None else []))

    def latent_seed(self, index: int, epoch: int) -> int:
        return int(self.rng(index, epoch, 2).integers(2**62))

    def noise_seed(self, index: int, epoch: int) -> int:
        return int(self.rng(index, epoch, 3).integers(2**62))

    def caption(self, index: int, epoch: int | None = None) -> str:
        epoch = self.epoch if epoch is None else epoch
        item = self.items[self.index[index]]
        opts = self.subsets[item.subset].captions
        return process_caption(item.caption, opts, self.rng(index, epoch, 1), epoch, self.text_replacements)

    def static_caption(self, item_index: int) -> str:
        """The caption of an item whose captions never vary (what the text-encoder cache stores)."""
        item = self.items[item_index]
        opts = self.subsets[item.subset].captions
        return process_caption(item.caption, opts, np.random.default_rng(0), 0, self.text_replacements)

    # ------------------------------------------------------------------------------------------ pixels
    def cover_image(self, item_index: int) -> tuple[Image.Image, tuple[int, int]]:
        """The item's image decoded and scaled to just cover its bucket (every crop and flip is taken from it),
        and the file's (h, w): decoded once and kept while the process holds under `DECODED_CACHE_BYTES` of them."""
        if item_index in self.decoded:
            return self.decoded[item_index]
        item = self.items[item_index]
        img = load_rgb(item.path, item.data)
        self.decode_count += 1
        original = (img.height, img.width)
        size = cover_size(img.size, self.item_buckets[item_index])
        if size != img.size:
            img = img.resize(size, Image.Resampling.LANCZOS)
        if self.decoded_bytes + size[0] * size[1] * 3 <= DECODED_CACHE_BYTES:
            self.decoded[item_index] = (img, original)
            self.decoded_bytes += size[0] * size[1] * 3
        return img, original

    def forget_decoded(self) -> None:
        """Drop the decoded images (once the latent cache holds what they gave, training never reads them)."""
        self.decoded.clear()
        self.decoded_bytes = 0

    def render(self, item_index: int, flip: bool, rng: np.random.Generator | None = None):
        """The training pixels of an item: resized to cover its bucket, cropped (center unless the subset crops at
        random and `rng` is given), flipped. Returns (tensor, original (h, w), crop (top, left))."""
        img, original = self.cover_image(item_index)
        random_crop = self.subset_of(item_index).random_crop and rng is not None
        img, crop = resize_and_crop(img, self.item_buckets[item_index], not random_crop, rng)
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_tensor(img), original, crop

    def __getitem__(self, key) -> Example:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        item_index = self.index[index]
        item, sub = self.items[item_index], self.subset_of(item_index)
        bw, bh = self.item_buckets[item_index]
        rng = self.rng(index, epoch)
        ex = Example(
            None, self.caption(index, epoch), (0, 0), (0, 0), (bh, bw), sub.is_reg,
            self.prior_loss_weight if sub.is_reg else 1.0, self.latent_seed(index, epoch),
            self.noise_seed(index, epoch),
        )
        if self.latent_cache is not None:
            # Center crop only (random crops are refused with the cache): the flip is the generator's first draw,
            # as in the branch below, so a cached run flips the same samples as an uncached one.
            flip = sub.random_flip and rng.random() < 0.5
            w, h = self.size_of(item_index)
            ex.original_size, ex.crop_top_left = (h, w), center_crop_offset((w, h), (bw, bh))
            ex.latents = self.latent_cache.latents_for(self, item_index, flip, ex.latent_seed)
        else:
            random_crop = sub.random_crop
            face = face_box(item.path) if sub.face_crop_aug_range and item.is_file else None
            if face is not None:  # its own stream, as color_aug's; scaled from the file at a random scale
                img = load_rgb(item.path, item.data)
                ex.original_size = (img.height, img.width)
                img, ex.crop_top_left = face_crop(img, face, (bw, bh), sub.face_crop_aug_range,
                                                  self.rng(index, epoch, 5), random_crop)
            else:  # the cover image is already at its bucket's scale: this only crops
                img, ex.original_size = self.cover_image(item_index)
                img, ex.crop_top_left = resize_and_crop(img, (bw, bh), not random_crop, rng)
            flip = sub.random_flip and rng.random() < 0.5
            if flip:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if sub.color_aug:  # its own stream: turning it on changes no other draw
                img = color_aug(img, self.rng(index, epoch, 4))
            ex.pixel_values = to_tensor(img)
        if self.masks is not None:  # the image's geometry: its bucket, crop and flip
            ex.mask = self.masks.render(item.path, item.data, sub.is_reg, self.size_of(item_index), (bw, bh),
                                        ex.crop_top_left, flip)
        if self.text_cache is not None:
            ex.prompt_embeds, ex.pooled = self.text_cache.outputs_for(self, item_index, ex.caption)
        return ex


def collate(examples: list[Example]) -> dict:
    sizes = {e.target_size for e in examples}
    if len(sizes) > 1:
        raise DataError(f"a batch mixes bucket sizes {sorted(sizes)}; batches must come from one bucket")
    batch = {
        "captions": [e.caption for e in examples],
        "original_sizes": [e.original_size for e in examples],
        "crops_top_left": [e.crop_top_left for e in examples],
        "target_size": examples[0].target_size,
        "loss_weights": torch.tensor([e.loss_weight for e in examples], dtype=torch.float32),
        "is_reg": torch.tensor([e.is_reg for e in examples], dtype=torch.bool),
        "latent_seeds": [e.latent_seed for e in examples],
        "noise_seeds": [e.noise_seed for e in examples],
    }
    for key, attr in (("pixel_values", "pixel_values"), ("latents", "latents"), ("prompt_embeds", "prompt_embeds"),
                      ("pooled", "pooled"), ("masks", "mask")):
        values = [getattr(e, attr) for e in examples]
        if all(v is not None for v in values):
            batch[key] = torch.stack(values)
    return batch
