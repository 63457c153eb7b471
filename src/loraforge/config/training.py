"""`[training]`: the loop."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Section


class TrainingConfig(Section):
    max_train_steps: int | None = Field(
        None,
        ge=1,
        description=(
            "Optimizer steps to train. With `num_train_epochs` also set, training stops at whichever comes first. "
            "Both unset: 1000 steps."
        ),
    )
    num_train_epochs: int | None = Field(None, ge=1, description="Epochs (passes over images × repeats) to train.")
    batch_size: int = Field(1, ge=1, description="Images per step on each device.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Batches accumulated into one optimizer step."
    )
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = Field(
        "auto",
        description=(
            "Compute precision of the frozen model. `auto`: bf16 on a GPU that supports it, else fp16 on a GPU, "
            "`no` (fp32) on the CPU. LoRA weights and optimizer state stay fp32."
        ),
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: much less memory, about 20-30 % slower."
    )
    seed: int = Field(42, description="Seed for noise, timesteps, data order and LoRA initialisation.")
    save_every_n_steps: int | None = Field(
        None,
        ge=1,
        description=(
            "Write a checkpoint folder (LoRA files + optimizer, scheduler and step state) every N steps; "
            "`training.resume` continues from one."
        ),
    )
    resume: str | None = Field(
        None,
        description="Continue from a checkpoint folder, or `latest` for the newest one of this run.",
    )
    dataloader_num_workers: int = Field(0, ge=0, description="Worker processes that load images.")
