"""Optimizer and learning-rate schedule from `[optimizer]`."""

from __future__ import annotations

import torch

from ..config.optimizer import OptimizerConfig

PART_LABELS = {"unet": "unet", "te1": "text_encoder", "te2": "text_encoder_2"}


def param_groups(network, cfg: OptimizerConfig) -> list[dict]:
    """Optimizer groups: per adapted part (`unet_lr`, `text_encoder_lr`, else `learning_rate`), split by the
    network into block-wise learning-rate weights (`network.block_lr_weights`) and LoRA+ up matrices
    (`network.loraplus_lr_ratio`), each group at the part's learning rate × its scale. Names: `unet`,
    `unet_lr×0.5`, `unet_plus`, `text_encoder`, ..."""
    groups = []
    for part in network.parts:
        base = (cfg.unet_lr if part == "unet" else cfg.text_encoder_lr) or cfg.learning_rate
        for group in network.param_groups(part):
            if not group.params or group.lr_scale == 0:
                continue
            name = PART_LABELS[part] + (f"_{group.name}" if group.name else "")
            groups.append({"params": group.params, "lr": base * group.lr_scale, "name": name})
    if not groups:
        raise ValueError("the network has no trainable parameters")
    return groups


def build_optimizer(cfg: OptimizerConfig, groups: list[dict]) -> torch.optim.Optimizer:
    if cfg.type == "adamw":
        return torch.optim.AdamW(
            groups,
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_epsilon,
            weight_decay=cfg.adam_weight_decay,
        )
    raise ValueError(f"unknown optimizer.type {cfg.type!r}")


def build_scheduler(cfg: OptimizerConfig, optimizer, total_steps: int):
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        cfg.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=cfg.lr_warmup_steps,
        num_training_steps=total_steps,
        num_cycles=cfg.lr_num_cycles,
        power=cfg.lr_power,
    )
