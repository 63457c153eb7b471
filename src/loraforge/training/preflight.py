"""Pre-flight checks: everything a run needs that can be checked before the first step, so that a run never trains
for an hour and then fails on a prompt file or a full disk. `loraforge train --dry-run` and `Trainer.prepare` both
call `preflight` before anything is written (the config's own checks, such as seed ranges and sample sizes in
multiples of 8, ran when it was loaded)."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import time
from pathlib import Path

from ..config import TrainConfig, dump_config
from ..errors import LoraforgeError, ModelLoadError, RunFolderError, TrainingError
from ..families import TINY_RESOLUTION
from ..formats.file_kind import kind_of_file, require_kind
from ..utils.dtypes import torch_dtype
from ..models.loading import _looks_like_path as looks_like_path  # the rule loading applies
from ..models.toy import TOY_NAME
from ..sampling.prompts import read_prompt_file
from ..sampling.run import base_request
from .attention import check_attention
from .optim import check_optimizer
from .state import STATE_FILE, check_fresh_start, check_resume, complete_checkpoints, read_state, resolve_resume

log = logging.getLogger(__name__)


# Σ (in + out features) of the layers the default targets adapt (the UNet's attention projections, FLUX's block
# linears; plus the text encoders' with network.train_text_encoder), counted on the full-size models: a LoRA of rank r has r × this many
# parameters. Presets that adapt more layers (`full`, conv layers) are larger; the estimate is for a warning only.
LORA_PARAMS_PER_RANK = {  # family -> (UNet only, UNet + text encoders)
    "sd15": (199_296, 273_024),
    "sd2": (207_488, 395_904),
    "sdxl": (1_451_520, 1_852_928),
    "flux": (5_369_856, 5_443_584),  # FLUX's default targets (every linear layer of the blocks) + CLIP-L's q/k/v/out
}
DISK_MARGIN = 1 << 30  # warn when less than the estimate plus 1 GiB is free


def run_folder(cfg: TrainConfig) -> Path:
    return Path(cfg.output.output_dir).expanduser() / cfg.output.output_name


def logging_folder(cfg: TrainConfig) -> Path:
    """`output.logging_dir`, else `<run folder>/logs`."""
    if cfg.output.logging_dir:
        return Path(cfg.output.logging_dir).expanduser()
    return run_folder(cfg) / "logs"


def tracker_run(cfg: TrainConfig) -> tuple[str, dict]:
    """(accelerate's project name, its tracker init_kwargs): TensorBoard logs into `logging_folder/<name>`, the
    name `<log_prefix><YYYYmmddHHMMSS>` (kohya's) or `loraforge`; wandb logs to project `loraforge`, the run named
    so or after output_name."""
    prefix = cfg.output.log_prefix
    name = f"{prefix}{time.strftime('%Y%m%d%H%M%S')}" if prefix is not None else None
    if cfg.output.log_with == "wandb":
        return "loraforge", {"wandb": {"name": name or cfg.output.output_name, "dir": str(logging_folder(cfg))}}
    return name or "loraforge", {}


def _check_logger(cfg: TrainConfig) -> None:
    if cfg.output.log_with == "wandb" and importlib.util.find_spec("wandb") is None:
        raise TrainingError(
            "output.log_with = 'wandb' needs the wandb package, which is not installed: "
            "pip install 'loraforge[wandb]' (then `wandb login`), or set output.log_with = 'tensorboard'"
        )
    if cfg.output.logging_dir and cfg.output.log_with != "none":
        _check_writable(logging_folder(cfg), "output.logging_dir")


def preflight(cfg: TrainConfig, family: str | None = None) -> list[str]:
    """Check what the run will need before it starts; raise the first problem as a `LoraforgeError` naming the
    field and the fix. Returns notes for the plan (what could not be checked here, the disk estimate). `family`
    (when known, e.g. detected by the dry run) sizes the disk estimate; without it, `model.family` or the largest."""
    return check_inputs(cfg) + [disk_note(cfg, family)]


def check_inputs(cfg: TrainConfig) -> list[str]:
    """Every check of `preflight` but the disk estimate, which needs the family: `--dry-run` runs these before it
    detects the family and opens the images, so a LoRA given as the model is named as such."""
    notes = [_check_model(cfg)]
    check_optimizer(cfg.optimizer)  # the class imports and takes every optimizer_args keyword
    check_attention(cfg.training.attention)
    _check_logger(cfg)
    run_dir = run_folder(cfg)
    if cfg.training.resume:
        _check_resume(cfg, run_dir)
    elif not cfg.output.overwrite:
        check_fresh_start(run_dir)
    if cfg.sampling.sample_prompts:
        # Parsed as sampling will: every line, its options, sizes in multiples of 8, seeds in range.
        read_prompt_file(cfg.sampling.sample_prompts, base_request(cfg, cfg.dataset.size or (TINY_RESOLUTION, TINY_RESOLUTION)))
    _check_writable(run_dir)
    return [n for n in notes if n]


def disk_note(cfg: TrainConfig, family: str | None = None) -> str:
    return _disk_note(cfg, _check_writable(run_folder(cfg)), family)


def _check_resume(cfg: TrainConfig, run_dir: Path) -> None:
    """The checkpoint to resume exists, can be read, and continues this run with this config (the checks the
    trainer repeats when it resumes)."""
    folder = resolve_resume(cfg.training.resume, run_dir)  # raises InputNotFoundError naming training.resume
    try:
        read_state(folder)
    except (ValueError, TypeError) as e:  # a cut or edited train_state.json
        earlier = [p.name for p in complete_checkpoints(run_dir) if p != folder]
        raise RunFolderError(
            f"training.resume: {folder / STATE_FILE} cannot be read ({e}); the checkpoint is damaged. Resume an "
            f"earlier checkpoint ({', '.join(earlier) or 'none is left'}) by setting training.resume to its folder"
        ) from None
    check_resume(folder, run_dir, dump_config(cfg))


def _check_model(cfg: TrainConfig) -> str:
    """A local model path (or VAE path) must exist; a hub id cannot be checked offline (the dry run reads its
    configs from the hub or the local cache; training downloads the weights)."""
    m = cfg.model
    hub = []
    for field, name in (("model.pretrained_model_name_or_path", m.pretrained_model_name_or_path),
                        ("model.vae", m.vae), ("model.config_dir", m.config_dir)):
        if name is None or (field == "model.pretrained_model_name_or_path" and name == TOY_NAME
                            and not Path(name).exists()):  # the shipped toy model
            continue
        path = Path(name).expanduser()
        if path.exists():
            _check_model_path(field, path)
            continue
        if field == "model.config_dir" or looks_like_path(name):
            raise ModelLoadError(
                f"{field} = {name!r}: no such file or folder; fix the path (a local diffusers folder or a single "
                ".safetensors file), or give a Hugging Face hub id such as 'stabilityai/stable-diffusion-xl-base-1.0'"
            )
        hub.append(f"{field} = {name!r}")
    if not hub:
        return ""
    return (f"{' and '.join(hub)}: a hub id, not a local path; its weights are downloaded (or read from the hub "
            "cache) when training loads the model, which this check cannot do offline")


def _check_model_path(field: str, path: Path) -> None:
    """A local model is a diffusers folder or a model file, a VAE a VAE (or a model holding one): a LoRA or an
    embedding given there is named as such before any loading."""
    if field == "model.config_dir":
        return
    if path.is_dir():
        if field == "model.pretrained_model_name_or_path" and not (path / "model_index.json").is_file():
            raise ModelLoadError(
                f"{field} = {str(path)!r}: a folder without model_index.json, so not a diffusers model; pass the "
                "model's own folder (the one with model_index.json) or a single .safetensors file"
            )
        return
    expected = ("model",) if field == "model.pretrained_model_name_or_path" else ("vae", "model")
    try:
        kind_of_file(path)
    except LoraforgeError as e:  # a damaged file: the reader's message, with the field
        raise ModelLoadError(f"{field} = {str(path)!r}: {e}") from None
    require_kind(path, expected, f"{field} =", ModelLoadError,
                 "give the base model here (a diffusers folder, a single .safetensors checkpoint or a hub id); a "
                 "LoRA is applied with `loraforge sample --lora` or `loraforge merge into-model --lora`, an "
                 "embedding with `sample --embedding`" if field == "model.pretrained_model_name_or_path" else
                 "give a VAE (a diffusers VAE folder or .safetensors file, or a hub id)")


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable(run_dir: Path, field: str = "output.output_dir") -> Path:
    """The run folder (or the nearest folder above it that exists, where it will be created) must be a writable
    folder. Returns that folder. Nothing is created."""
    base = _existing_parent(run_dir.absolute())
    also = " (or output.output_name)" if field == "output.output_dir" else ""
    if not base.is_dir():
        raise TrainingError(f"output folder {run_dir}: {base} is a file, not a folder; change {field}{also}")
    if not os.access(base, os.W_OK | os.X_OK):
        raise TrainingError(
            f"output folder {run_dir}: {base} is not writable; change {field} to a folder you can write, "
            "or fix its permissions"
        )
    return base


def lora_size_estimate(cfg: TrainConfig, family: str | None) -> int:
    """Bytes of the final files (kohya and diffusers layouts) plus one checkpoint (fp32 weights, optimizer state
    of about two more copies, and its LoRA files) when checkpoints are saved."""
    if cfg.model.pretrained_model_name_or_path is None or cfg.network.algo == "none":
        return 0  # the embedded tiny model, or an embeddings file alone: kilobytes
    fam = family or (cfg.model.family if cfg.model.family != "auto" else None)
    te = bool(cfg.network.train_text_encoder)
    per_rank = LORA_PARAMS_PER_RANK[fam][te] if fam in LORA_PARAMS_PER_RANK else max(  # unknown yet: the largest
        sizes[te] for sizes in LORA_PARAMS_PER_RANK.values())
    params = cfg.network.rank * per_rank
    one_file = params * torch_dtype(cfg.output.save_precision).itemsize
    files = int(cfg.output.write_kohya) + int(cfg.output.write_diffusers)
    total = one_file * files
    if cfg.training.save_every_n_steps or cfg.training.save_every_n_epochs:
        total += params * 4 * 3 + one_file * files
    return total


def _disk_note(cfg: TrainConfig, folder: Path, family: str | None) -> str:
    need = lora_size_estimate(cfg, family)
    free = shutil.disk_usage(folder).free
    size = f"about {need / 2**20:.0f} MiB" if need >= 2**20 else "under 1 MiB"
    text = f"disk: {size} for the LoRA files (and a checkpoint, when saved), {free / 2**30:.1f} GiB free"
    if free < need + DISK_MARGIN:
        log.warning("only %.1f GiB free on %s, below the estimate (%.0f MiB) plus a 1 GiB margin: free some space "
                    "or change output.output_dir", free / 2**30, folder, need / 2**20)
        text += " — LOW: free some space or change output.output_dir"
    return text
