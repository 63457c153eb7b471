"""Helpers shared by the training commands (`cli.commands`) and the tool commands (`cli.tools`), so that neither
imports the other."""

from __future__ import annotations


def quiet_progress() -> None:
    """Silence the libraries' per-component loading bars (called only by commands that load models)."""
    from diffusers.utils import logging as diffusers_logging  # lazy: diffusers is heavy and the CLI starts fast
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
