"""Training metadata in the safetensors header: sd-scripts' `ss_*` keys, the `sshs_*` hashes and SAI's
`modelspec.*`, which AUTOMATIC1111, ComfyUI managers and Civitai show (kohya.md §2.3). All values are strings."""

from __future__ import annotations

import hashlib
import json
import time
from io import BytesIO

import torch

from ..config.dataset import pixel_size
from ..families import BASE_MODEL_KEY, tiny_base_model
from ..families import family as family_info

NETWORK_MODULE = {"lora": "networks.lora", "locon": "networks.lora"}  # the rest: lycoris.kohya


def family_metadata(name: str) -> dict[str, str]:
    """The header keys A1111, ComfyUI managers and Civitai read the base model from."""
    fam = family_info(name)
    return {"ss_base_model_version": fam.base_model_version, "ss_v2": str(fam.kohya_v2),
            "modelspec.architecture": f"{fam.modelspec_architecture}/lora"}


def model_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """sd-scripts' `sshs_model_hash` (sha256 of the tensor bytes after the header) and `sshs_legacy_hash`
    (first 8 hex of sha256 of 64 KiB at offset 1 MiB), computed over an in-memory file with only the `ss_*` keys."""
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata={k: v for k, v in metadata.items() if k.startswith("ss_")})
    header = int.from_bytes(data[:8], "little")
    new = hashlib.sha256(data[8 + header :]).hexdigest()
    buf = BytesIO(data)
    buf.seek(0x100000)
    legacy = hashlib.sha256(buf.read(0x10000)).hexdigest()[:8]
    return new, legacy


def training_metadata(
    cfg, run: dict, family: str, algo: str, network_args: dict | None = None, network_module: str | None = None
) -> dict[str, str]:
    """`cfg` is the `TrainConfig`; `run` holds what only the run knows (image count, steps, start time, ...).

    `network_module` / `network_args` are what sd-scripts would be given to build the same network
    (`networks.lora` for LoRA and plain LoCon, `lycoris.kohya` with `algo=...` otherwise; values as strings)."""
    width, height = pixel_size(run["resolution"]) if run.get("resolution") else (0, 0)  # (w, h), or a square
    base = family_metadata(family)
    meta = {
        "ss_session_id": str(run.get("session_id", "")),
        "ss_training_started_at": str(run.get("started_at", time.time())),
        "ss_training_finished_at": str(time.time()),
        "ss_output_name": cfg.output.output_name,
        "ss_learning_rate": str(cfg.optimizer.learning_rate),
        "ss_unet_lr": str(cfg.optimizer.unet_lr or cfg.optimizer.learning_rate),
        "ss_text_encoder_lr": str(cfg.optimizer.text_encoder_lr or cfg.optimizer.learning_rate),
        "ss_num_train_images": str(run.get("num_train_images", 0)),
        "ss_num_reg_images": str(run.get("num_reg_images", 0)),
        "ss_num_batches_per_epoch": str(run.get("batches_per_epoch", 0)),
        "ss_num_epochs": str(run.get("epochs", 0)),
        "ss_epoch": str(run.get("epoch", 0)),
        "ss_steps": str(run.get("step", 0)),
        "ss_max_train_steps": str(run.get("max_train_steps", 0)),
        "ss_batch_size_per_device": str(cfg.training.batch_size),
        "ss_total_batch_size": str(run.get("total_batch_size", cfg.training.batch_size)),
        "ss_gradient_checkpointing": str(cfg.training.gradient_checkpointing),
        "ss_gradient_accumulation_steps": str(cfg.training.gradient_accumulation_steps),
        "ss_lr_warmup_steps": str(cfg.optimizer.lr_warmup_steps),
        "ss_lr_scheduler": cfg.optimizer.lr_scheduler,
        "ss_optimizer": run.get("optimizer", cfg.optimizer.type),
        "ss_max_grad_norm": str(cfg.optimizer.max_grad_norm or 0.0),
        "ss_network_module": network_module or NETWORK_MODULE.get(algo, "lycoris.kohya"),
        "ss_network_dim": str(cfg.network.rank),
        "ss_network_alpha": str(cfg.network.alpha if cfg.network.alpha is not None else cfg.network.rank),
        "ss_network_dropout": str(cfg.network.dropout),
        "ss_network_args": json.dumps(network_args or {}),
        "ss_mixed_precision": str(run.get("mixed_precision", cfg.training.mixed_precision)),
        "ss_v2": base["ss_v2"],
        "ss_base_model_version": base["ss_base_model_version"],
        "ss_sd_model_name": str(run.get("model_name", "")),
        "ss_resolution": f"({width}, {height})" if width else "",  # sd-scripts' str((w, h))
        "ss_seed": str(cfg.training.seed),
        "ss_flip_aug": str(cfg.dataset.random_flip),
        "ss_random_crop": str(not cfg.dataset.center_crop),
        "ss_dataset_dirs": json.dumps(run.get("dataset_dirs", {})),
        "ss_tag_frequency": json.dumps(run.get("tag_frequency", {})),
        "ss_training_comment": str(run.get("comment", "trained with loraforge")),
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": base["modelspec.architecture"],
        "modelspec.implementation": family_info(family).modelspec_implementation,
        "modelspec.title": cfg.output.output_name,
        "modelspec.resolution": f"{width}x{height}" if width else "",
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "modelspec.prediction_type": "v" if run.get("prediction_type") == "v_prediction" else "epsilon",
    }
    if run.get("tiny_model"):
        meta[BASE_MODEL_KEY] = tiny_base_model(family)
    t = cfg.training
    if t.snr_gamma is not None:
        meta["ss_min_snr_gamma"] = str(t.snr_gamma)
    if t.noise_offset:
        meta["ss_noise_offset"] = str(t.noise_offset)
    if t.loss_type != "l2":
        meta["ss_loss_type"] = t.loss_type
        if t.loss_type in ("huber", "smooth_l1"):
            meta.update(ss_huber_schedule=t.huber_schedule, ss_huber_c=str(t.huber_c), ss_huber_scale=str(t.huber_scale))
    if t.debiased_estimation_loss:
        meta["ss_debiased_estimation"] = "True"
    if t.ip_noise_gamma:
        meta["ss_ip_noise_gamma"] = str(t.ip_noise_gamma)
        meta["ss_ip_noise_gamma_random_strength"] = str(t.ip_noise_gamma_random_strength)
    if t.zero_terminal_snr:
        meta["ss_zero_terminal_snr"] = "True"
    if t.clip_skip is not None:  # kohya counts the last layer as 1: loraforge's 1 (penultimate) is its 2
        meta["ss_clip_skip"] = str(t.clip_skip + 1)
    for key in ("ss_prior_loss_weight", "ss_max_token_length", "ss_color_aug", "ss_face_crop_aug_range"):
        if key in run:
            meta[key] = str(run[key])
    return meta
