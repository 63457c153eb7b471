"""Aspect-ratio buckets (kohya.md §1.7) and the batch sampler that keeps one bucket per batch.

Sizes are (width, height) here, as in sd-scripts; the batches carry (height, width) like the rest of the data code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def make_bucket_resolutions(max_reso: tuple[int, int], min_size: int, max_size: int, steps: int) -> list[tuple[int, int]]:
    """sd-scripts' predefined buckets: the square of the same area, and for every width from `min_size` to
    `max_size` (step `steps`) the tallest height on the grid whose area is at most the maximum, both orientations."""
    area = max_reso[0] * max_reso[1]
    side = int(math.sqrt(area) // steps) * steps
    resos = {(side, side)}
    width = min_size
    while width <= max_size:
        height = min(max_size, int(area // width // steps) * steps)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += steps
    return sorted(resos)


@dataclass(frozen=True)
class BucketSettings:
    resolution: tuple[int, int]  # (w, h): its area is the bucket area
    enable: bool = False
    min_reso: int = 256
    max_reso: int = 1024
    steps: int = 64
    no_upscale: bool = False


class BucketManager:
    def __init__(self, s: BucketSettings):
        self.s = s
        self.max_area = s.resolution[0] * s.resolution[1]
        self.predefined = [] if not s.enable or s.no_upscale else make_bucket_resolutions(
            s.resolution, s.min_reso, s.max_reso, s.steps
        )
        self._ratios = np.array([w / h for w, h in self.predefined])

    def round_to_steps(self, x: float) -> int:
        x = int(x + 0.5)
        return x - x % self.s.steps

    def select(self, width: int, height: int) -> tuple[int, int]:
        """The bucket (w, h) of an image of this size. Without buckets: the training resolution."""
        s = self.s
        if not s.enable:
            return s.resolution
        ratio = width / height
        if not s.no_upscale:
            if (width, height) in self.predefined:
                return (width, height)
            return self.predefined[int(np.abs(self._ratios - ratio).argmin())]
        if width * height > self.max_area:  # shrink to the area, keeping the ratio as well as the grid allows
            rw = math.sqrt(self.max_area * ratio)
            rh = self.max_area / rw
            bw = self.round_to_steps(rw)
            bh_w = self.round_to_steps(bw / ratio)
            bh = self.round_to_steps(rh)
            bw_h = self.round_to_steps(bh * ratio)
            if bh_w and bw_h and abs(bw / bh_w - ratio) < abs(bw_h / bh - ratio):
                width, height = bw, int(bw / ratio + 0.5)
            else:
                width, height = int(bh * ratio + 0.5), bh
        return (width - width % s.steps, height - height % s.steps)


class BucketBatchSampler(torch.utils.data.Sampler):
    """Batches that each hold samples of one bucket (and one group: a kohya `[[datasets]]` entry).

    An epoch's batches are a pure function of (seed, epoch): each bucket's samples are shuffled and cut into batches
    of the group's size (the last one may be smaller), then the batches are shuffled. It yields lists of
    `(epoch, index)` so that the dataset knows the epoch even in worker processes that were started earlier.
    """

    drop_last = False

    def __init__(self, keys: list, batch_sizes: dict, seed: int):
        """`keys[i]`: the (group, bucket) of sample i; `batch_sizes[group]`: that group's batch size."""
        self.keys, self.batch_sizes, self.seed, self.epoch = keys, batch_sizes, seed, 0
        # None tells accelerate's BatchSamplerShard (several processes) that batches have dynamic lengths: it then
        # hands out whole batches round-robin (pads with whole batches) instead of re-cutting them across buckets.
        self.batch_size = None
        self.max_batch_size = max(batch_sizes.values())
        self.buckets: dict = {}
        for i, k in enumerate(keys):
            self.buckets.setdefault(k, []).append(i)
        self._order = sorted(self.buckets, key=repr)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def sampler(self):
        """Itself: accelerate passes the epoch on to `loader.batch_sampler[.batch_sampler].sampler.set_epoch`, also
        through the `SkipBatchSampler` of a resumed epoch."""
        return self

    def batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch, 0xB0C])
        out = []
        for key in self._order:
            idx = self.buckets[key]
            idx = [idx[j] for j in rng.permutation(len(idx))]
            size = self.batch_sizes[key[0]]
            out += [idx[j : j + size] for j in range(0, len(idx), size)]
        return [out[j] for j in rng.permutation(len(out))]

    def __len__(self) -> int:
        return sum(math.ceil(len(v) / self.batch_sizes[k[0]]) for k, v in self.buckets.items())

    def __iter__(self):
        epoch = self.epoch
        for batch in self.batches(epoch):
            yield [(epoch, i) for i in batch]

    def summary(self) -> dict:
        """Samples per bucket, for the log and the metadata."""
        return {f"{w}x{h}" + (f" (group {g})" if g else ""): len(v) for (g, (w, h)), v in sorted(self.buckets.items())}


class PairedBatchSampler(BucketBatchSampler):
    """diffusers' DreamBooth batches (`dataset.prior_batches = "paired"`): sample 2k is a training sample and 2k + 1
    the class sample paired with it; the pairs are batched as `BucketBatchSampler` batches samples (`keys[k]`: the
    key of pair k), and a batch yields its training samples, then their class samples: twice the batch size."""

    def batches(self, epoch: int) -> list[list[int]]:
        return [[2 * k for k in b] + [2 * k + 1 for k in b] for b in super().batches(epoch)]
