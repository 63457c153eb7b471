"""Typed, validated, documented configuration: one `TrainConfig` flows from the CLI or UI to the trainer."""

from .base import ConfigError
from .load import dump_config, load_config, parse_override, validate_config
from .root import DEFAULT_MAX_TRAIN_STEPS, TrainConfig

__all__ = [
    "ConfigError",
    "DEFAULT_MAX_TRAIN_STEPS",
    "TrainConfig",
    "dump_config",
    "load_config",
    "parse_override",
    "validate_config",
]
