"""The plan of a network: which modules of an `SDModel` get an adapter, with which rank, alpha and learning-rate
weight. Every engine (peft for `lora`, LyCORIS modules for the rest) builds from the same plan, so presets,
block-wise dims and the k×k-convolution rules mean the same thing whatever the algo."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..config.network import NetworkConfig, block_count_problem
from ..errors import NetworkError
from .blocks import block_label, unet_block_indices
from .presets import PRESETS, by_classes, by_suffixes, layer_kind

log = logging.getLogger(__name__)


@dataclass
class Target:
    part: str  # unet / te1 / te2
    path: str  # diffusers / transformers module path inside the part
    module: torch.nn.Module
    kind: str  # linear / conv1x1 / conv (k×k) / norm
    rank: int  # 0 for norm layers
    alpha: float | None  # the alpha the user asked for (None for norm layers); scale = alpha / rank (or /√rank)
    block: int | None = None  # block-wise index (UNet), None outside the blocks and for text encoders
    lr_weight: float = 1.0

    @property
    def key(self) -> tuple[str, str]:
        return self.part, self.path


def part_modules(model, cfg: NetworkConfig) -> dict[str, torch.nn.Module]:
    """part -> root module to adapt: the UNet, and the text encoders when `train_text_encoder` is on (those of
    `family.lora_text_encoders`)."""
    parts = {"unet": model.unet}
    if cfg.train_text_encoder:
        allowed = model.family.lora_text_encoders  # FLUX: CLIP-L only
        for i, te in enumerate(model.text_encoders):
            if allowed is None or f"te{i + 1}" in allowed:
                parts[f"te{i + 1}"] = te
    return parts


def _candidates(part: str, root, cfg: NetworkConfig, family) -> dict[str, torch.nn.Module]:
    if cfg.preset is not None:
        preset = PRESETS[cfg.preset]
        if part == "unet":
            return by_classes(root, preset.unet_classes, preset.unet_names)
        return by_classes(root, preset.te_classes)
    suffixes = cfg.target_modules if part == "unet" else cfg.text_encoder_target_modules
    if part == "unet" and family.default_targets and "target_modules" not in cfg.model_fields_set:
        # FLUX: attention, MLPs and modulation of every block (not the final `proj_out` outside them)
        found = by_suffixes(root, family.default_targets)
        blocks = unet_block_indices(dict(root.config), family.name, found)
        return {path: m for path, m in found.items() if blocks[path] is not None}
    return by_suffixes(root, suffixes)


def plan_targets(model, cfg: NetworkConfig) -> list[Target]:
    """The modules to adapt, in model order. Raises `NetworkError` (naming the fields) when the plan cannot work."""
    family = model.family.name
    problem = block_count_problem(cfg, family)
    if problem:
        raise NetworkError(problem)
    convs_allowed = cfg.algo != "lora" and (cfg.preset is None or PRESETS[cfg.preset].convs)
    targets: list[Target] = []
    skipped_convs: list[str] = []
    for part, root in part_modules(model, cfg).items():
        found = _candidates(part, root, cfg, model.family)
        if cfg.preset is None and not any(layer_kind(m) != "norm" for m in found.values()):
            field = "target_modules" if part == "unet" else "text_encoder_target_modules"
            raise NetworkError(
                f"network.{field} = {getattr(cfg, field)} matched no {part} module; use names such as "
                + ("to_q, to_k, to_v, to_out.0, proj_in, ff.net.2, conv1" if part == "unet" else "q_proj, k_proj, v_proj, out_proj, fc1, fc2")
            )
        blocks = unet_block_indices(dict(model.unet.config), family, found) if part == "unet" else {}
        for path, module in found.items():
            kind = layer_kind(module)
            if kind == "norm" and not (cfg.train_norm and part == "unet"):
                continue
            if kind == "conv" and not convs_allowed:
                skipped_convs.append(f"{part}:{path}")
                continue
            targets.append(_resolve(cfg, part, path, module, kind, blocks.get(path)))
    if skipped_convs and cfg.algo == "lora" and cfg.preset is None:
        raise NetworkError(
            f"network.target_modules selects {len(skipped_convs)} k×k convolutions ({', '.join(skipped_convs[:3])}"
            + (", ..." if len(skipped_convs) > 3 else "")
            + "); algo = 'lora' adapts linear and 1×1 layers only: use network.algo = 'locon'"
        )
    if skipped_convs:
        log.info("network: %d k×k convolutions of the selected blocks are not adapted (%s)", len(skipped_convs),
                 "algo 'lora' adapts linear and 1×1 layers; use 'locon' for them" if cfg.algo == "lora"
                 else f"preset {cfg.preset!r} has no k×k convolutions")
    if cfg.algo == "locon" and not any(t.kind == "conv" for t in targets) and cfg.conv_dim != 0:
        log.warning("network: algo = 'locon' adapts no k×k convolution here, so it trains what 'lora' would: name them "
                    "in network.target_modules (conv1, conv2) or pick a preset with them (network.preset = 'full', "
                    "LyCORIS' default)")
    kept = [t for t in targets if (t.rank > 0 or t.kind == "norm") and t.lr_weight > 0]
    removed = len(targets) - len(kept)
    if removed:
        log.info("network: %d modules removed by a block rank or learning-rate weight of 0", removed)
    if not any(t.kind != "norm" for t in kept):
        raise NetworkError("network: no module left to adapt (check network.preset, network.block_dims, "
                         "network.conv_dim and network.block_lr_weights)")
    return kept


def _resolve(cfg: NetworkConfig, part, path, module, kind, block) -> Target:
    if kind == "norm":
        rank, alpha = 0, None
    else:
        conv = kind == "conv"
        dims = cfg.conv_block_dims if conv else cfg.block_dims
        alphas = cfg.conv_block_alphas if conv else cfg.block_alphas
        if conv:
            rank = cfg.conv_dim if cfg.conv_dim is not None else cfg.rank
            alpha = cfg.conv_alpha if cfg.conv_alpha is not None else cfg.alpha
        else:
            rank, alpha = cfg.rank, cfg.alpha
        if block is not None and dims is not None:
            rank = int(dims[block])
            if alphas is not None:
                alpha = float(alphas[block])
        if alpha is None:
            alpha = float(rank)
    lr_weight = 1.0
    if block is not None and cfg.block_lr_weights is not None:
        lr_weight = float(cfg.block_lr_weights[block])
    return Target(part, path, module, kind, rank, alpha, block, lr_weight)


def describe_plan(targets: list[Target], family: str) -> str:
    """One line: module counts per part and kind, and the block-wise ranks when they vary."""
    counts: dict[str, int] = {}
    for t in targets:
        counts[f"{t.part} {t.kind}"] = counts.get(f"{t.part} {t.kind}", 0) + 1
    text = ", ".join(f"{k} {n}" for k, n in counts.items())
    ranks = {(t.block, t.kind == "conv"): t.rank for t in targets if t.block is not None}
    if len({r for r in ranks.values()}) > 1:
        by_block: dict[int, set[int]] = {}
        for (b, _), r in ranks.items():
            by_block.setdefault(b, set()).add(r)
        text += "; ranks " + " ".join(
            f"{block_label(family, b)}={'/'.join(map(str, sorted(r)))}" for b, r in sorted(by_block.items())
        )
    return text
