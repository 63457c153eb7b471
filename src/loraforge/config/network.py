"""`[network]`: the adapter that is trained."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Section


class NetworkConfig(Section):
    algo: Literal["lora"] = Field("lora", description="Adapter kind. `lora`: low-rank update of linear layers.")
    rank: int = Field(16, ge=1, le=1024, description="LoRA rank (kohya `network_dim`, diffusers `rank`).")
    alpha: float | None = Field(
        None,
        gt=0,
        description=(
            "LoRA alpha; the update is scaled by alpha / rank. Unset: equal to `rank` (scale 1, diffusers' "
            "convention). kohya's default is 1."
        ),
    )
    target_modules: list[str] = Field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"],
        description=(
            "UNet modules that get a LoRA, matched by name suffix. Default: attention q/k/v/out. Add `proj_in`, "
            "`proj_out`, `ff.net.0.proj`, `ff.net.2` for the whole transformer blocks."
        ),
    )
    train_text_encoder: bool = Field(
        False, description="Also train a LoRA on the text encoder(s) (both CLIPs for SDXL)."
    )
    text_encoder_target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"],
        description="Text-encoder modules that get a LoRA when `train_text_encoder` is on.",
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input (peft `lora_dropout`).")
    init_lora_weights: Literal["default", "gaussian"] = Field(
        "default",
        description="How the down matrices start: `default` is Kaiming-uniform, `gaussian` is N(0, 1/rank). Up starts at 0.",
    )
