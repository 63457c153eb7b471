"""`[optimizer]`: optimizer, learning rates and schedule."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Section

Scheduler = Literal[
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"
]


class OptimizerConfig(Section):
    type: Literal["adamw"] = Field("adamw", description="Optimizer. `adamw`: torch AdamW.")
    learning_rate: float = Field(1e-4, gt=0, description="Base learning rate; LoRA wants about 1e-4 with AdamW.")
    unet_lr: float | None = Field(None, gt=0, description="UNet learning rate. Unset: `learning_rate`.")
    text_encoder_lr: float | None = Field(
        None, gt=0, description="Text-encoder learning rate. Unset: `learning_rate`."
    )
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="AdamW beta2.")
    adam_epsilon: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    adam_weight_decay: float = Field(1e-2, ge=0, description="AdamW (decoupled) weight decay.")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the gradient norm to this value; unset: no clipping."
    )
    lr_scheduler: Scheduler = Field("constant", description="Learning-rate schedule.")
    lr_warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps at the start of the schedule.")
    lr_num_cycles: int = Field(1, ge=1, description="Restarts for `cosine_with_restarts`.")
    lr_power: float = Field(1.0, gt=0, description="Power of the `polynomial` schedule.")
