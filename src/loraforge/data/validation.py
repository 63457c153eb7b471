"""The held-out images of the validation loss (`training.validation_*`): a folder of their own, a seeded fraction of the
training images (taken out of training), and/or the regularisation images (which keep training too). They form a
dataset without randomness: no flips, no random crops, no caption dropout or shuffling, every image once, each at
epoch 0, so every evaluation sees exactly the same pixels and captions."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import DataError
from .check import validate_items
from .dataset import ImageCaptionDataset
from .sources import ImageItem, collect_folder, uncaptioned_error
from .subsets import DataPlan, Subset


def split_training_items(items: list[ImageItem], subsets: list[Subset], fraction: float, seed: int
                         ) -> tuple[list[ImageItem], list[ImageItem]]:
    """(kept for training, held out): round(fraction × training images) of the training (not regularisation) images,
    at least one, chosen at random with `seed`; at least one training image stays."""
    train = [i for i, it in enumerate(items) if not subsets[it.subset].is_reg]
    n = max(1, round(fraction * len(train)))
    if n >= len(train):
        raise DataError(f"training.validation_split = {fraction:g} of {len(train)} training image(s) leaves none to "
                        "train on: use a smaller fraction, more images, or training.validation_data_dir")
    chosen = set(np.random.default_rng([seed, 7]).choice(train, size=n, replace=False).tolist())
    return ([it for i, it in enumerate(items) if i not in chosen],
            [it for i, it in enumerate(items) if i in chosen])


def _steady(subset: Subset) -> Subset:
    """The subset without randomness and repeats, weighted as a training image."""
    captions = replace(subset.captions, dropout_rate=0.0, dropout_every_n_epochs=0, tag_dropout_rate=0.0,
                       shuffle=False)
    return replace(subset, captions=captions, num_repeats=1, is_reg=False, random_flip=False, random_crop=False,
                   color_aug=False, face_crop_aug_range=None)


def hold_out(cfg, plan: DataPlan, resolution: tuple[int, int]) -> tuple[list[ImageItem], list[ImageItem], list[Subset]]:
    """(training items, validation items, the subsets the validation items refer to) for `cfg.training`'s
    validation options; the training items are `plan.items` less a `validation_split`."""
    t, d = cfg.training, cfg.dataset
    items, held = plan.items, []
    seed = t.seed if t.validation_seed is None else t.validation_seed
    subsets = list(plan.subsets)
    if t.validation_split:
        items, held = split_training_items(items, plan.subsets, t.validation_split, seed)
    if t.validation_use_reg_images:
        reg = [it for it in items if plan.subsets[it.subset].is_reg]
        if not reg:
            raise DataError("training.validation_use_reg_images = true, but the dataset has no regularisation or "
                            "class images: add some (dataset.reg_data_dir, prior preservation), or use "
                            "training.validation_data_dir / validation_split")
        held += reg
    if t.validation_data_dir:
        folder = Path(t.validation_data_dir).expanduser()
        subsets.append(Subset(str(folder), folder, caption_extension=d.caption_extension,
                              class_tokens=d.instance_prompt, where="training.validation_data_dir",
                              fallback_source="instance_prompt"))
        found, uncaptioned = collect_folder(folder, caption_extension=d.caption_extension,
                                            metadata_file=d.metadata_file, caption_column=d.caption_column,
                                            fallback=d.instance_prompt, fallback_source="instance_prompt",
                                            subset=len(subsets) - 1, what="training.validation_data_dir")
        if uncaptioned:
            raise uncaptioned_error(uncaptioned, d.caption_extension, d.metadata_file,
                                    "set dataset.instance_prompt to caption them")
        held += validate_items(found, d, resolution)
    return items, held, [_steady(s) for s in subsets]


def validation_dataset(items: list[ImageItem], subsets: list[Subset], groups, resolution, seed: int,
                       text_replacements: dict | None = None) -> ImageCaptionDataset:
    """The held-out images as a dataset: each once, in its bucket, with its caption as written (plus
    `text_replacements`, pivotal tuning's new tokens)."""
    return ImageCaptionDataset(items, resolution, seed=seed, subsets=subsets, groups=groups,
                               text_replacements=text_replacements)
