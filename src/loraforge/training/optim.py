"""Optimizers, parameter groups and learning-rate schedules from `[optimizer]`.

Groups: one per adapted part (UNet, text encoder(s)) and one for new token embeddings (pivotal tuning), each with
its learning rate and weight decay. The optimizers themselves come from their libraries: torch (AdamW, SGD),
bitsandbytes (AdamW8bit), transformers (Adafactor), prodigyopt (Prodigy).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import typing

import torch

from ..config.optimizer import BuiltinOptimizer, OptimizerConfig
from ..errors import OptimizerSetupError
from ..families import DIFFUSERS_PREFIXES

log = logging.getLogger(__name__)


def param_groups(network, cfg: OptimizerConfig, embeddings: list[torch.nn.Parameter] | None = None) -> list[dict]:
    """Optimizer groups: per adapted part (`unet_lr`, `text_encoder_lr`, else `learning_rate`), split by the
    network into block-wise learning-rate weights (`network.block_lr_weights`) and LoRA+ up matrices
    (`network.loraplus_lr_ratio`), each group at the part's learning rate × its scale; plus the new token
    embeddings (`embedding_lr`, else the text-encoder rate). Weight decay: `adam_weight_decay` for the UNet,
    `adam_weight_decay_text_encoder` (else `adam_weight_decay`) for text-encoder parameters and embeddings.
    Names: `unet`, `unet_lr×0.5`, `unet_plus`, `text_encoder`, ..., `embeddings`."""
    te_decay = cfg.adam_weight_decay_text_encoder
    te_decay = cfg.adam_weight_decay if te_decay is None else te_decay
    te_lr = cfg.text_encoder_lr or cfg.learning_rate
    groups = []
    for part in network.parts:
        is_unet = part == "unet"
        base = (cfg.unet_lr or cfg.learning_rate) if is_unet else te_lr
        for group in network.param_groups(part):
            if not group.params or group.lr_scale == 0:
                continue
            name = DIFFUSERS_PREFIXES[part] + (f"_{group.name}" if group.name else "")  # "text_encoder_2_..."
            groups.append({"params": group.params, "lr": base * group.lr_scale, "name": name,
                           "weight_decay": cfg.adam_weight_decay if is_unet else te_decay})
    if embeddings:
        groups.append({"params": embeddings, "lr": cfg.embedding_lr or te_lr, "weight_decay": te_decay,
                       "name": "embeddings"})
    if not groups:
        raise OptimizerSetupError("nothing to train: the network has no trainable parameters")
    return groups


# keywords that an option of `[optimizer]` sets, so `optimizer_args` cannot (one place for each value)
OPTION_OF_KEYWORD = {
    "params": "the network's parameter groups", "lr": "optimizer.learning_rate",
    "betas": "optimizer.adam_beta1 and adam_beta2", "eps": "optimizer.adam_epsilon",
    "weight_decay": "optimizer.adam_weight_decay (and adam_weight_decay_text_encoder)",
    "momentum": "optimizer.adam_beta1", "d0": "optimizer.prodigy_d0", "beta3": "optimizer.prodigy_beta3",
    "decouple": "optimizer.prodigy_decouple", "use_bias_correction": "optimizer.prodigy_use_bias_correction",
    "safeguard_warmup": "optimizer.prodigy_safeguard_warmup", "relative_step": "optimizer.adafactor_relative_step",
    "scale_parameter": "optimizer.adafactor_scale_parameter", "warmup_init": "optimizer.adafactor_warmup_init",
}


def build_optimizer(cfg: OptimizerConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """The optimizer of `optimizer.type` over `groups`, with its options and `optimizer.optimizer_args`."""
    cls, kwargs = check_optimizer(cfg)
    relative = cfg.type == "adafactor" and cfg.adafactor_relative_step
    for g in groups:
        g.setdefault("lr", cfg.learning_rate)
        g.setdefault("initial_lr", g["lr"])
        if relative:  # the relative step computes each group's rate itself
            g["lr"] = None
    if cfg.type == "prodigy" and not 0.1 <= cfg.learning_rate <= 10:
        log.warning(
            "optimizer.learning_rate = %g with Prodigy: Prodigy finds the step size itself and wants a learning "
            "rate of about 1.0 (it multiplies its estimate D)", cfg.learning_rate,
        )
    lr = None if relative else cfg.learning_rate
    for fast in fast_kernels(cls, cfg.optimizer_args):
        try:  # on copies: a refused constructor has already written its defaults into the groups it was given
            return cls([dict(g) for g in groups], lr=lr, **kwargs, **fast, **cfg.optimizer_args)
        except RuntimeError as e:  # e.g. fused kernels not built for these parameters' device or dtype
            log.debug("optimizer %s with %s refused (%s); trying the next", cls.__name__, fast, e)
    return cls(groups, lr=lr, **kwargs, **cfg.optimizer_args)


def fast_kernels(cls: type, args: dict) -> list[dict]:
    """The multi-tensor implementations to try for a torch optimizer, fastest first: `fused` (one kernel for all
    parameters: 3× the default per-tensor loop for AdamW on LoRA-sized tensors on the CPU too), then `foreach`.
    Torch's own default picks the per-tensor loop on the CPU. None when `optimizer_args` chooses, or the class
    has neither option (other libraries' optimizers)."""
    if "fused" in args or "foreach" in args:
        return []
    params = inspect.signature(cls).parameters
    return [{k: True} for k in ("fused", "foreach") if k in params and cls.__module__.startswith("torch.optim")]


def check_optimizer(cfg: OptimizerConfig) -> tuple[type, dict]:
    """The optimizer class and the keywords its options set, after checking that it imports and takes every
    `optimizer_args` keyword (pre-flight runs this before the model loads)."""
    cls, kwargs = _optimizer_class(cfg)
    check_optimizer_args(cls, cfg.type, cfg.optimizer_args, taken={"params", "lr", "weight_decay", *kwargs})
    return cls, kwargs


def _optimizer_class(cfg: OptimizerConfig) -> tuple[type, dict]:
    """The class and the keywords its `[optimizer]` options set (beyond params, lr and the groups' weight decay)."""
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    if cfg.type == "adamw":
        return torch.optim.AdamW, {"betas": betas, "eps": cfg.adam_epsilon}
    if cfg.type == "sgd":
        return torch.optim.SGD, {"momentum": cfg.adam_beta1}
    if cfg.type == "adamw8bit":
        return _adamw8bit(), {"betas": betas, "eps": cfg.adam_epsilon}
    if cfg.type == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy, dict(
            betas=betas, beta3=cfg.prodigy_beta3, eps=cfg.adam_epsilon, decouple=cfg.prodigy_decouple,
            use_bias_correction=cfg.prodigy_use_bias_correction, safeguard_warmup=cfg.prodigy_safeguard_warmup,
            d0=cfg.prodigy_d0,
        )
    if cfg.type == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor, dict(relative_step=cfg.adafactor_relative_step,
                               scale_parameter=cfg.adafactor_scale_parameter, warmup_init=cfg.adafactor_warmup_init)
    return import_optimizer_class(cfg.type), {}


def import_optimizer_class(path: str) -> type:
    """`optimizer.type = "module.Class"`: the optimizer class at that import path."""
    module_name, _, name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or the package failing at import (bitsandbytes without CUDA)
        raise OptimizerSetupError(
            f"optimizer.type = {path!r}: module {module_name!r} cannot be imported ({type(e).__name__}: {e}). "
            "Install the package that provides it, fix the path, or use one of the built-in types "
            f"({', '.join(typing.get_args(BuiltinOptimizer))})"
        ) from None
    cls = getattr(module, name, None)
    if cls is None:
        near = difflib.get_close_matches(name, [n for n in dir(module) if not n.startswith("_")], n=3)
        hint = f"; did you mean {' or '.join(f'{module_name}.{n}' for n in near)}?" if near else ""
        raise OptimizerSetupError(f"optimizer.type = {path!r}: module {module_name!r} has no {name!r}{hint}")
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise OptimizerSetupError(f"optimizer.type = {path!r} is not an optimizer class (a torch.optim.Optimizer "
                                  "subclass)")
    return cls


def check_optimizer_args(cls: type, label: str, args: dict, taken: set[str]) -> None:
    """Refuse an `optimizer_args` keyword that an option sets, or that the class's constructor does not take,
    naming the keyword, the nearest accepted one and every accepted one."""
    params = inspect.signature(cls).parameters
    any_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted = [n for n, p in params.items() if p.kind in kinds and n not in taken and n != "self"]
    for key in args:
        if key in taken and (key in params or any_keyword):
            raise OptimizerSetupError(
                f"optimizer.optimizer_args: {key!r} of optimizer {label!r} is set by "
                f"{OPTION_OF_KEYWORD.get(key, 'an option of [optimizer]')}; set it there and remove it from "
                "optimizer_args"
            )
        if key not in accepted and not any_keyword:
            near = difflib.get_close_matches(key, accepted, n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise OptimizerSetupError(
                f"optimizer.optimizer_args: optimizer {label!r} ({cls.__module__}.{cls.__name__}) takes no keyword "
                f"{key!r}.{hint} It accepts: {', '.join(accepted) or 'none beyond the [optimizer] options'}"
            )


def _adamw8bit() -> type:
    try:
        import bitsandbytes as bnb
    except Exception as e:  # ImportError, or a broken CUDA setup raising at import
        raise OptimizerSetupError(
            f"optimizer.type = 'adamw8bit' needs bitsandbytes, which cannot be used here ({type(e).__name__}: {e}). "
            "Install it with `pip install loraforge[bnb]` on a machine it supports, or use optimizer.type = 'adamw'"
        ) from None
    return bnb.optim.AdamW8bit


SCHEDULES_WITHOUT_WARMUP = ("constant", "adafactor")  # diffusers' `constant` ignores num_warmup_steps


def warmup_steps(cfg: OptimizerConfig) -> int:
    """Optimizer steps of linear warm-up the schedule applies (`lr_warmup_steps`, 0 for schedules without one)."""
    return 0 if cfg.lr_scheduler in SCHEDULES_WITHOUT_WARMUP else cfg.lr_warmup_steps


def build_scheduler(cfg: OptimizerConfig, optimizer, total_steps: int, num_processes: int = 1):
    """The learning-rate schedule over `total_steps` optimizer steps, with `warmup_steps(cfg)` of warm-up.

    accelerate's prepared scheduler steps the wrapped one `num_processes` times per optimizer step (it assumes a
    schedule sized for one process's batches), so the warm-up and the total are both scaled by `num_processes`
    here: the schedule is in optimizer steps whatever the number of processes."""
    if cfg.lr_scheduler == "adafactor":
        from transformers.optimization import AdafactorSchedule

        return AdafactorSchedule(optimizer, initial_lr=cfg.learning_rate)
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        cfg.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=warmup_steps(cfg) * num_processes,
        num_training_steps=total_steps * num_processes,
        num_cycles=cfg.lr_num_cycles,
        power=cfg.lr_power,
    )


def current_lrs(optimizer, scheduler) -> dict[str, float]:
    """Learning rate of each named group as the optimizer will apply it (Prodigy: d × lr)."""
    out = {}
    opt = getattr(optimizer, "optimizer", optimizer)
    lrs = scheduler.get_last_lr()
    for g, lr in zip(opt.param_groups, lrs):
        name = g.get("name", "group")
        out[name] = lr * g["d"] if "d" in g else lr
    return out
