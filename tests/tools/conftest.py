"""Fixtures for the tool tests: one small trained LoRA per family (UNet + text encoders), kohya and diffusers files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Trained:
    family: str
    kohya: Path
    diffusers: Path
    model_dir: Path  # the tiny base model (diffusers folder)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_dirs) -> dict[str, Trained]:
    """A 4-step rank-4 LoRA with text-encoder layers on each tiny model, trained once for the session."""
    from loraforge.config import load_config
    from loraforge.training.trainer import Trainer

    out = tmp_path_factory.mktemp("trained")
    result = {}
    for family in ("sd15", "sdxl"):
        cfg = load_config(None, [
            f"model.family='{family}'", f"output.output_dir='{out}'", f"output.output_name='lora-{family}'",
            "output.log_with='none'", "training.max_train_steps=3", "network.rank=4", "network.alpha=2",
            "optimizer.learning_rate=1e-2", "sampling.at_end=false", "network.train_text_encoder=true",
        ])
        files = Trainer(cfg).run().files
        result[family] = Trained(family, files.kohya, files.diffusers, tiny_dirs[family])
    return result
