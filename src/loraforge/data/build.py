"""From `[dataset]` to what the training loop iterates: items (checked), the dataset, its sampler and loader."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from .check import validate_items
from .dataset import EpochShuffleSampler, ImageCaptionDataset, collate
from .sources import ImageItem, collect_items


@dataclass
class TrainData:
    items: list[ImageItem]
    dataset: ImageCaptionDataset
    sampler: EpochShuffleSampler
    dataloader: torch.utils.data.DataLoader
    run_info: dict = field(default_factory=dict)  # for the ss_* metadata

    def describe(self) -> str:
        folders = ", ".join(self.run_info.get("dataset_dirs", {}))
        return f"{len(self.items)} images × {self.dataset.repeats} repeats from {folders}"


def build_train_data(cfg, resolution: int, text_replacements: dict[str, str] | None = None) -> TrainData:
    """`cfg` is the whole `TrainConfig` (dataset, batch size, workers, seed). `text_replacements` are applied to
    every caption last (pivotal tuning's `TOK` → `<s0><s1>`)."""
    d, t = cfg.dataset, cfg.training
    items = validate_items(collect_items(d), d, resolution)
    if text_replacements:
        items = [replace(i, caption=_replace(i.caption, text_replacements)) for i in items]
    dataset = ImageCaptionDataset(items, resolution, d.center_crop, d.random_flip, d.repeats, t.seed)
    sampler = EpochShuffleSampler(len(dataset), t.seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=t.batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=t.dataloader_num_workers,
        persistent_workers=t.dataloader_num_workers > 0,
        # Its own generator: creating an epoch's iterator must not draw from the global RNG that noise and
        # timesteps come from, or a resumed run would drift from an uninterrupted one.
        generator=torch.Generator().manual_seed(t.seed),
    )
    folder = str(items[0].path.parent)
    info = {"num_train_images": len(items), "dataset_dirs": {folder: {"n_repeats": d.repeats, "img_count": len(items)}}}
    return TrainData(items, dataset, sampler, loader, info)


def _replace(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text
