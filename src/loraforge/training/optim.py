"""Optimizer and learning-rate schedule from `[optimizer]`."""

from __future__ import annotations

import torch

from ..config.optimizer import OptimizerConfig

PART_LABELS = {"unet": "unet", "te1": "text_encoder", "te2": "text_encoder_2"}


def param_groups(network, cfg: OptimizerConfig) -> list[dict]:
    """One group per adapted part, each with its learning rate (`unet_lr`, `text_encoder_lr`, else
    `learning_rate`)."""
    groups = []
    for part in network.parts:
        params = network.parameters(part)
        if not params:
            continue
        lr = (cfg.unet_lr if part == "unet" else cfg.text_encoder_lr) or cfg.learning_rate
        groups.append({"params": params, "lr": lr, "name": PART_LABELS[part]})
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
