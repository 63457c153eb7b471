"""Checkpoints: a folder per save with the LoRA files and everything needed to continue exactly.

The optimizer, scheduler and RNG states go through accelerate's `save_state`/`load_state` (the engine that also
runs several GPUs; it reloads them with torch's `weights_only` mode). The frozen UNet and text encoders are never
written: a hook swaps them for the network's own tensors (`network.safetensors`). `train_state.json` holds the
step, the epoch and the data-loader position, and is written last, so a folder without it is incomplete and is
never resumed from.
"""

from __future__ import annotations

from ..errors import InputNotFoundError, RunFolderError

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_FILE = "train_state.json"
NETWORK_FILE = "network.safetensors"
EMBEDDINGS_FILE = "embeddings.safetensors"
STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class TrainState:
    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already consumed

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    folder = checkpoints_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if STEP_DIR.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def resolve_resume(resume: str, run_dir: Path) -> Path:
    if resume == "latest":
        found = complete_checkpoints(run_dir)
        if not found:
            raise InputNotFoundError(
                f"training.resume = 'latest' but {checkpoints_dir(run_dir)} holds no complete checkpoint"
            )
        return found[-1]
    path = Path(resume).expanduser()
    if not (path / STATE_FILE).is_file():
        raise InputNotFoundError(
            f"training.resume = {resume!r} is not a complete loraforge checkpoint folder (no {STATE_FILE}); "
            f"checkpoints are under <output_dir>/<output_name>/checkpoints/step-N"
        )
    return path


def read_state(folder: Path) -> TrainState:
    return TrainState(**json.loads((folder / STATE_FILE).read_text()))


def register_network_hooks(accelerator, network, pivotal=None) -> None:
    """Make accelerate save/load only the network (and new token embeddings), never the frozen base models."""
    from safetensors.torch import load_file

    from ..utils.files import save_safetensors_atomic

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            save_safetensors_atomic(network.state_dict(), Path(output_dir) / NETWORK_FILE)
            if pivotal is not None:
                save_safetensors_atomic(pivotal.state_dict(), Path(output_dir) / EMBEDDINGS_FILE)
        weights.clear()

    def load_hook(models, input_dir):
        models.clear()
        network.load_state_dict(load_file(str(Path(input_dir) / NETWORK_FILE)))
        if pivotal is not None:
            emb = Path(input_dir) / EMBEDDINGS_FILE
            if not emb.is_file():
                raise RunFolderError(f"{input_dir} has no {EMBEDDINGS_FILE}: it was not saved by a pivotal-tuning run")
            pivotal.load_state_dict(load_file(str(emb)))

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def prune_checkpoints(run_dir: Path, current: TrainState, last_n_steps: int | None, last_n_epochs: int | None
                      ) -> list[Path]:
    """Delete complete checkpoints older than the last N steps / epochs (kohya's `save_last_n_*`)."""
    import shutil

    removed = []
    for folder in complete_checkpoints(run_dir):
        st = read_state(folder)
        if st.global_step >= current.global_step:
            continue
        old = (last_n_steps and st.global_step <= current.global_step - last_n_steps) or (
            last_n_epochs and st.epoch <= current.epoch - last_n_epochs
        )
        if old:
            shutil.rmtree(folder)
            removed.append(folder)
    return removed
