"""Check a whole dataset before training starts: every image is opened and decoded once, so a bad file stops
the run up front (with the list of them) instead of crashing it hours later."""

from __future__ import annotations

import logging

from ..config.dataset import DatasetConfig
from .errors import DataError
from .images import ImageProblem, check_image
from .sources import ImageItem

log = logging.getLogger(__name__)


def validate_items(items: list[ImageItem], cfg: DatasetConfig, resolution: int) -> list[ImageItem]:
    min_size = cfg.min_image_size if cfg.min_image_size is not None else resolution // 2
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


__all__ = ["ImageProblem", "validate_items"]
