"""`[optimizer]`: optimizer, learning rates and schedule."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from .base import Section, str_choices

Scheduler = Literal[
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial", "adafactor"
]
BuiltinOptimizer = Literal["adamw", "adamw8bit", "adafactor", "prodigy", "sgd"]
# `module.Class`: any torch optimizer class by import path (kohya's `--optimizer_type torch.optim.AdamW`)
IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


class OptimizerConfig(Section):
    type: BuiltinOptimizer | str = Field(
        "adamw",
        description=(
            "`adamw` (torch), `adamw8bit` (bitsandbytes, 8-bit states), `adafactor` (transformers), `prodigy` "
            "(prodigyopt: adapts the step size itself, use learning_rate ≈ 1.0), `sgd` (torch, with momentum); "
            "or any optimizer class by import path, `module.Class` (e.g. `torch.optim.RAdam`): it gets "
            "`learning_rate` and the weight decays, its other keywords come from `optimizer_args` only."
        ),
    )
    optimizer_args: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Extra keywords for the optimizer's constructor (kohya's `--optimizer_args`), e.g. "
            "`{ d_coef = 2, growth_rate = inf }` for Prodigy; checked against the class's signature when training "
            "starts. Keywords that have an option here (learning rate, betas, eps, weight decay, the prodigy_* and "
            "adafactor_* options) are set there with the built-in optimizers."
        ),
    )

    @field_validator("type", mode="before")
    @classmethod
    def _builtin_or_path(cls, value: Any) -> Any:
        """One message for a name that is neither a built-in optimizer nor an import path (not one per union arm)."""
        choices = str_choices(cls)["type"]
        if isinstance(value, str) and value.lower() not in choices and not IMPORT_PATH.fullmatch(value):
            raise ValueError(f"one of {', '.join(map(repr, choices.values()))}, or an optimizer class by import "
                             "path such as 'torch.optim.RAdam'")
        return value

    learning_rate: float = Field(1e-4, gt=0, description="Base learning rate; LoRA wants about 1e-4 with AdamW, 1.0 with Prodigy.")
    unet_lr: float | None = Field(None, gt=0, description="UNet learning rate. Unset: `learning_rate`.")
    text_encoder_lr: float | None = Field(
        None, gt=0, description="Text-encoder learning rate (LoRA and new token embeddings). Unset: `learning_rate`."
    )
    embedding_lr: float | None = Field(
        None, gt=0, description="Learning rate of the new token embeddings (pivotal tuning). Unset: `text_encoder_lr`."
    )
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="Adam/Prodigy beta1 (SGD: momentum).")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="Adam/Prodigy beta2 (the Prodigy recipe uses 0.99).")
    adam_epsilon: float = Field(1e-8, gt=0, description="Adam/Prodigy epsilon.")
    adam_weight_decay: float = Field(1e-2, ge=0, description="Weight decay of the UNet parameters.")
    adam_weight_decay_text_encoder: float | None = Field(
        None, ge=0, description="Weight decay of text-encoder parameters and embeddings. Unset: `adam_weight_decay`."
    )
    prodigy_d0: float = Field(1e-6, gt=0, description="Prodigy: initial estimate of the step size D.")
    prodigy_beta3: float | None = Field(
        None, ge=0, lt=1, description="Prodigy: decay of the step-size estimate. Unset: sqrt(beta2)."
    )
    prodigy_decouple: bool = Field(True, description="Prodigy: AdamW-style decoupled weight decay.")
    prodigy_use_bias_correction: bool = Field(True, description="Prodigy: Adam's bias correction.")
    prodigy_safeguard_warmup: bool = Field(
        True, description="Prodigy: avoid a too-large D during warm-up (recommended with warm-up or restarts)."
    )
    adafactor_relative_step: bool = Field(
        False,
        description=(
            "Adafactor: compute the step size from the step count (then set `lr_scheduler = \"adafactor\"`; "
            "`learning_rate` is the initial value). False: fixed learning rate with the chosen schedule."
        ),
    )
    adafactor_scale_parameter: bool = Field(False, description="Adafactor: scale the step by the parameter's RMS.")
    adafactor_warmup_init: bool = Field(False, description="Adafactor: warm-up initialisation (relative step only).")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the gradient norm to this value; unset: no clipping."
    )
    scale_weight_norms: float | None = Field(
        None,
        gt=0,
        description=(
            "Max-norm regularisation (kohya): after each step, modules whose update ‖ΔW‖ exceeds this are "
            "scaled back to it (every algo; DoRA: the update before the decomposition; norm layers are left alone); "
            "the number scaled is logged. 1.0 is the guide's value."
        ),
    )
    lr_scheduler: Scheduler = Field(
        "constant", description="Learning-rate schedule (`adafactor` only with Adafactor's relative step)."
    )
    lr_warmup_steps: int = Field(
        0, ge=0, description="Linear warm-up at the start of the schedule, in optimizer steps (whatever the number "
        "of processes). `constant` and `adafactor` schedules have none."
    )
    lr_num_cycles: int = Field(1, ge=1, description="Hard restarts of `cosine_with_restarts`.")
    lr_power: float = Field(1.0, gt=0, description="Power of the `polynomial` schedule.")
