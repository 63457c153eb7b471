"""Check a whole dataset before training starts: every image is opened and decoded once, so a bad file stops
the run up front (with the list of them) instead of crashing it hours later. What is usable but probably not what
was meant (the same image twice, captions longer than the text encoder reads) becomes a line of the dataset
summary."""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import replace

import numpy as np

from ..config.dataset import DatasetConfig, pixel_size
from ..errors import DataError
from ..models.tokenizer import clip_tokenizer
from .captions import process_caption
from .images import ImageProblem, check_image, file_bytes
from .sources import ImageItem

log = logging.getLogger(__name__)


def min_image_size(cfg: DatasetConfig, resolution) -> int:
    """`dataset.min_image_size`, unset: half the resolution's shorter side."""
    return cfg.min_image_size if cfg.min_image_size is not None else min(pixel_size(resolution)) // 2


def validate_items(items: list[ImageItem], cfg: DatasetConfig, resolution) -> list[ImageItem]:
    """The usable items (images at least `min_image_size` on the shorter side, decodable)."""
    min_size = min_image_size(cfg, resolution)
    good, problems = [], []
    for item in items:
        problem = check_image(item.path, min_size, item.data)
        if problem is None:
            good.append(item)
        else:
            problems.append(problem)
    if problems and not cfg.skip_bad_images:
        raise DataError(
            f"{len(problems)} of {len(items)} image(s) cannot be used; fix or remove them, lower "
            "dataset.min_image_size, or set dataset.skip_bad_images = true to train without them",
            [str(p) for p in problems],
        )
    for p in problems:
        log.warning("skipping %s", p)
    if not good:
        raise DataError("no usable image is left in the dataset", [str(p) for p in problems])
    return good


def duplicate_notes(items: list[ImageItem]) -> list[str]:
    """One line per set of images with the same bytes (each trains as often as it appears)."""
    by_hash: dict[str, list[ImageItem]] = {}
    for item in items:
        digest = hashlib.sha256(file_bytes(item.path, item.data)).hexdigest()
        by_hash.setdefault(digest, []).append(item)
    return [f"duplicate images (same bytes): {' = '.join(str(it.path) for it in same)}; remove all but one unless "
            "the extra weight is meant" for same in by_hash.values() if len(same) > 1]


@functools.cache
def _tokenizer():
    return clip_tokenizer()  # the vocabulary and the 77-token window of every SD 1.x / 2.x / SDXL text encoder


def long_caption_note(dataset, max_token_length: int = 75) -> str:
    """How many captions (as trained: prefix, suffix, first line, before dropout) exceed what the text encoders
    read: `max_token_length` tokens plus the start and end tokens (77 by default; kohya's chunked 150 / 225 give
    152 / 227), with the longest; "" when none."""
    tok = _tokenizer()
    limit = max_token_length + 2
    longest, count = (0, None), 0
    for i, item in enumerate(dataset.items):
        opts = replace(dataset.subset_of(i).captions, dropout_rate=0.0, dropout_every_n_epochs=0, tag_dropout_rate=0.0)
        caption = process_caption(item.caption, opts, np.random.default_rng(0))
        n = len(tok.tokenize(caption)) + 2  # with the start and end tokens
        if n > limit:
            count += 1
            longest = max(longest, (n, str(item.path)), key=lambda x: x[0])
    if not count:
        return ""
    longer = "dataset.max_token_length = 150 or 225 reads more" if max_token_length < 225 else ""
    advice = "shorten them or move what matters to the front" + (f" ({longer})" if longer else "")
    return (f"{count} caption(s) longer than the text encoder's {limit} tokens are cut to {limit} (the longest: "
            f"{longest[0]} tokens, {longest[1]}); {advice}")


__all__ = ["ImageProblem", "min_image_size", "validate_items", "duplicate_notes", "long_caption_note"]
