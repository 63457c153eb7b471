"""kohya's sampler names (`--sample_sampler`, `--ss`) → diffusers schedulers built from the model's own config. The
name table is `loraforge.config.samplers` (config validates the names without importing this layer)."""

from __future__ import annotations

from ..config.samplers import A1111_NAMES, SAMPLERS, normalize_sampler

__all__ = ["A1111_NAMES", "SAMPLERS", "make_scheduler", "normalize_sampler"]


def make_scheduler(name: str, base_config, prediction_type: str | None = None):
    import diffusers

    cls_name, kwargs = SAMPLERS[normalize_sampler(name)]
    cls = getattr(diffusers, cls_name)
    extra = dict(kwargs)
    if prediction_type:
        extra["prediction_type"] = prediction_type
    return cls.from_config(base_config, **extra)
