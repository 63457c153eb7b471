"""Checkpoints: a folder per save with the LoRA files and everything needed to continue exactly.

The optimizer, scheduler and RNG states go through accelerate's `save_state`/`load_state` (the engine that also
runs several GPUs; it reloads them with torch's `weights_only` mode). The frozen UNet and text encoders are never
written: a hook swaps them for the network's own tensors (`network.safetensors`). `train_state.json` holds the
run id, the step, the epoch and the data-loader position; a folder without it is incomplete and is never resumed
from. `config.toml` is the run's resolved config. `manifest.json` (written last) holds the size and SHA-256 of every
other file: a resume verifies them, so a damaged file (a truncated RNG state...) is refused instead of silently
making the resume inexact; `resume = "latest"` then takes the newest checkpoint that verifies.

A checkpoint is written into a temporary folder (`partial_dir`) renamed into place once complete; a save that fails
(a full disk, a folder that became read-only) raises `SaveFailedError` (`save_failed`) and keeps the checkpoints
already written, and what a killed process left behind is removed at the next start (`remove_stale_temporaries`).

A run folder belongs to one run: a fresh start is refused where checkpoints are (`check_fresh_start`), and a resume
is refused when the checkpoint's config differs in anything but `RESUME_MAY_CHANGE`, or when the folder holds
checkpoints of another run (`check_resume`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ..errors import InputNotFoundError, RunFolderError, SaveFailedError
from ..utils.files import TEMP_MARK, file_sha256, remove_temporaries, save_safetensors_atomic, write_text_atomic

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger("loraforge.train")

STATE_FILE = "train_state.json"
RUN_CONFIG_FILE = "config.toml"  # in each checkpoint: the resolved config of the run that wrote it
FINAL_MARKER = "config.toml"  # in the run folder, written last: its presence means the run finished
NETWORK_FILE = "network.safetensors"
EMBEDDINGS_FILE = "embeddings.safetensors"
MANIFEST_FILE = "manifest.json"
STEP_DIR = re.compile(r"^step-(\d+)$")




@dataclass
class TrainState:
    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already consumed
    run_id: str = ""  # the same in every checkpoint of a run, resumes included ("": written by an older loraforge)
    best_validation_loss: float | None = None  # the lowest validation loss so far (training.keep_best_validation)
    best_validation_step: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def partial_dir(target: Path) -> Path:
    """Where checkpoint `target` is written before it is renamed into place (a temporary name: see `is_temporary`)."""
    return target.with_name(f".{target.name}{TEMP_MARK}partial")


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Remove the temporary files and partial checkpoint folders an interrupted run left in `run_dir`, one log line
    each; return them."""
    removed = remove_temporaries(run_dir)
    for path in removed:
        log.info("removed %s (left by an interrupted save)", path)
    return removed


_CAUSES = {
    errno.ENOSPC: ("the disk is full", "free space on that disk"),
    errno.EDQUOT: ("the disk quota is used up", "free space within your quota"),
    errno.EACCES: ("permission denied", "make the run folder writable again (chmod u+w)"),
    errno.EPERM: ("operation not permitted", "make the run folder writable again (chmod u+w)"),
    errno.EROFS: ("the filesystem is read-only", "remount it read-write"),
}


def save_failed(error: OSError, what: str, path: Path, run_dir: Path) -> SaveFailedError:
    """The `SaveFailedError` for an `OSError` met while writing `what` at `path` in `run_dir`: the cause, what to
    free or fix (with the size of a checkpoint) and how to resume."""
    cause, fix = _CAUSES.get(error.errno, (error.strerror or str(error), "fix the cause"))
    found = complete_checkpoints(run_dir)
    if found and error.errno in (errno.ENOSPC, errno.EDQUOT):
        size = sum(f.stat().st_size for f in found[-1].iterdir() if f.is_file())
        fix += f" (a checkpoint takes {size / 2**20:.1f} MiB)"
    if found:
        then = (f"The last complete checkpoint, {found[-1]}, is kept: continue from it with "
                "training.resume = \"latest\" (--set training.resume=latest)")
    else:
        then = "No checkpoint was written yet: start the run again"
    detail = f"{error.filename}: {error.strerror}" if error.filename and error.strerror else str(error)
    return SaveFailedError(f"could not write {what} {path}: {cause} ({detail}). {fix[0].upper()}{fix[1:]}, then go "
                           f"on. {then}; what this save left half-written is removed at the next start.")


def as_os_error(error: RuntimeError, folder: Path) -> OSError | None:
    """torch.save reports a failed write as a RuntimeError ("... file write failed"); the OSError it stands for (a
    full disk when little space is left), or None for any other RuntimeError."""
    if "write failed" not in str(error) and "unexpected pos" not in str(error):
        return None
    free = shutil.disk_usage(folder).free if folder.exists() else 0
    return OSError(errno.ENOSPC if free < 64 * 2**20 else errno.EIO, str(error).strip().splitlines()[-1])


def complete_checkpoints(run_dir: Path) -> list[Path]:
    folder = checkpoints_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if STEP_DIR.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def resolve_resume(resume: str, run_dir: Path) -> Path:
    """The checkpoint folder `training.resume` names, verified against its manifest (`verify_checkpoint`)."""
    if resume == "latest":
        found = complete_checkpoints(run_dir)
        if not found:
            raise InputNotFoundError(
                f"training.resume = 'latest' but {checkpoints_dir(run_dir)} holds no complete checkpoint"
            )
        for folder in reversed(found):
            problems = verify_checkpoint(folder)
            if not problems:
                return folder
            log.warning("training.resume = 'latest': skipping %s, which is damaged (%s)", folder, "; ".join(problems))
        raise RunFolderError(
            f"training.resume = 'latest': every checkpoint in {checkpoints_dir(run_dir)} is damaged (see the warnings "
            "above); start the run afresh with output.overwrite = true"
        )
    path = Path(resume).expanduser()
    if not (path / STATE_FILE).is_file():
        raise InputNotFoundError(
            f"training.resume = {resume!r} is not a complete loraforge checkpoint folder (no {STATE_FILE}); "
            f"checkpoints are under <output_dir>/<output_name>/checkpoints/step-N"
        )
    problems = verify_checkpoint(path)
    if problems:
        step = int(STEP_DIR.match(path.name).group(1)) if STEP_DIR.match(path.name) else None
        older = [p for p in complete_checkpoints(path.parent.parent)
                 if step is not None and int(STEP_DIR.match(p.name).group(1)) < step and not verify_checkpoint(p)]
        offer = (f"resume from the previous complete checkpoint instead: training.resume = \"{older[-1]}\""
                 if older else "no earlier checkpoint of this run verifies: start it afresh")
        raise RunFolderError(
            f"training.resume = {resume!r}: {path} is damaged, so resuming it would not continue the run exactly: "
            f"{'; '.join(problems)}. {offer[0].upper()}{offer[1:]}",
            problems=problems,
        )
    return path


def write_manifest(folder: Path) -> None:
    """Write `manifest.json` (size and SHA-256 of every other file of the checkpoint folder), atomically; the last
    file of a checkpoint."""
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST_FILE}
    write_text_atomic(folder / MANIFEST_FILE, json.dumps({"files": files}, indent=1))


def verify_checkpoint(folder: Path) -> list[str]:
    """What is wrong with checkpoint `folder` against its manifest, one line per file (missing, size, content);
    [] when it verifies. A folder without manifest (an older loraforge) is accepted with a warning."""
    manifest = folder / MANIFEST_FILE
    if not manifest.is_file():
        log.warning("%s has no %s (an older loraforge wrote it): its files cannot be verified", folder, MANIFEST_FILE)
        return []
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError) as e:
        return [f"{manifest}: unreadable ({e})"]
    problems = []
    for name, want in files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != want["size"]:
            problems.append(f"{path}: {path.stat().st_size} bytes instead of {want['size']}")
        elif file_sha256(path) != want["sha256"]:
            problems.append(f"{path}: its content changed since it was written (SHA-256 differs)")
    return problems


def read_state(folder: Path) -> TrainState:
    return TrainState(**json.loads((folder / STATE_FILE).read_text()))


def _run_id(folder: Path) -> str | None:
    """The run id of checkpoint `folder`; None when its state cannot be read (a damaged checkpoint, never resumed)."""
    try:
        return read_state(folder).run_id
    except (OSError, ValueError, TypeError):
        return None


# What a resumed run may change: how long it runs, when it saves and samples, where and how it writes files, and how
# the same computation is carried out (precision, caches, memory). Every other option shapes the trained weights.
RESUME_MAY_CHANGE = frozenset({
    "training.resume", "training.max_train_steps", "training.num_train_epochs", "training.max_train_steps_per_image",
    "training.save_every_n_steps", "training.save_every_n_epochs", "training.save_last_n_steps",
    "training.save_last_n_epochs", "training.dataloader_num_workers", "training.gradient_checkpointing",
    "training.blocks_to_swap", "training.mixed_precision", "training.no_half_vae", "training.on_nonfinite", "training.nonfinite_skip_limit",
    "training.validation_data_dir", "training.validation_use_reg_images", "training.validate_every_n_steps",
    "training.validate_every_n_epochs", "training.validation_timesteps", "training.keep_best_validation",
    "training.ema_sampling",
    "dataset.cache_latents", "dataset.cache_latents_to_disk", "dataset.cache_text_encoder_outputs",
    "dataset.cache_text_encoder_outputs_to_disk", "dataset.vae_batch_size", "dataset.cache_dir",
    "model.config_dir", "model.allow_pickle", "sampling", "output",
})  # fmt: skip
_UNSET = object()


def _flat(table: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _show(value) -> str:
    if value is _UNSET:
        return "unset"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else '"...' + text[-76:]  # the end of a long path is what tells it apart


def config_changes(old_toml: str, new_toml: str) -> dict[str, str]:
    """field -> "old → new" for every option that differs between two dumped configs and may not change on resume."""
    old, new = _flat(tomllib.loads(old_toml)), _flat(tomllib.loads(new_toml))
    changes = {}
    for key in list(old) + [k for k in new if k not in old]:
        if key in RESUME_MAY_CHANGE or key.split(".")[0] in RESUME_MAY_CHANGE:
            continue
        a, b = old.get(key, _UNSET), new.get(key, _UNSET)
        if a != b:
            changes[key] = f"{_show(a)} → {_show(b)}"
    return changes


def check_fresh_start(run_dir: Path) -> None:
    """A run that does not resume may not replace a finished run, nor start where another run left checkpoints
    (they would mix)."""
    if (run_dir / FINAL_MARKER).is_file():
        raise RunFolderError(
            f"{run_dir} already holds a finished run; pick another output.output_name, set "
            "output.overwrite = true to replace it, or set training.resume to continue it"
        )
    found = complete_checkpoints(run_dir)
    if found:
        raise RunFolderError(
            f"{run_dir} holds the checkpoints of an earlier run ({', '.join(p.name for p in found)}) and this run "
            "starts afresh; set training.resume = \"latest\" to continue that run, output.overwrite = true to delete "
            "its checkpoints and start over, or pick another output.output_name"
        )


def clear_checkpoints(run_dir: Path) -> None:
    shutil.rmtree(checkpoints_dir(run_dir), ignore_errors=True)


def check_resume(folder: Path, run_dir: Path, config_toml: str) -> TrainState:
    """The state of checkpoint `folder`, once sure that continuing it with this config in `run_dir` continues the
    same run."""
    state = read_state(folder)
    stored = folder / RUN_CONFIG_FILE
    if not stored.is_file():
        log.warning("%s has no %s (an older loraforge wrote it): the config cannot be compared", folder,
                    RUN_CONFIG_FILE)
    else:
        changes = config_changes(stored.read_text(encoding="utf-8"), config_toml)
        if changes:
            raise RunFolderError(
                f"training.resume: {folder} was written with another config ({len(changes)} options that shape the "
                f"weights differ: {', '.join(changes)}; each is listed below), so resuming "
                "it would not continue the same run. Put the old values back (the checkpoint's config is "
                f"{stored}), or start a new run (another output.output_name, or output.overwrite = true without "
                "training.resume, which deletes the old checkpoints). A resume may change only the length "
                "(max_train_steps, num_train_epochs), the save and sampling options, [output], the precision and "
                "the caches",
                problems=[f"{key}: {change}" for key, change in changes.items()],
            )
    foreign = [p.name for p in complete_checkpoints(run_dir)
               if state.run_id and _run_id(p) not in ("", None, state.run_id)]
    if foreign:
        raise RunFolderError(
            f"training.resume: {run_dir} holds checkpoints of another run ({', '.join(foreign)}) than {folder}; "
            "resuming here would mix the two runs. Resume that run (training.resume = \"latest\") or write this one "
            "to another output.output_name"
        )
    return state


def register_network_hooks(accelerator, network, pivotal=None) -> None:
    """Make accelerate save/load only the network (and new token embeddings), never the frozen base models."""
    from safetensors.torch import load_file

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


def write_checkpoint(accelerator, run_dir: Path, state: TrainState, config_toml: str,
                     write_files: Callable[[Path], object], last_n_steps: int | None = None,
                     last_n_epochs: int | None = None) -> Path:
    """Write `checkpoints/step-N/` with every process's state, the LoRA files `write_files(folder)` writes, the
    config and the state; it appears only once complete (manifest last, then one rename). A failed write (a full
    disk, a read-only folder) removes the partial folder and raises `SaveFailedError`. Older checkpoints beyond
    `save_last_n_*` are pruned."""
    acc = accelerator
    target = checkpoints_dir(run_dir) / f"step-{state.global_step:06d}"
    partial = partial_dir(target)
    try:
        if acc.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(partial))  # every process writes its RNG state here
        acc.wait_for_everyone()  # all of them written before the manifest lists them
        if acc.is_main_process:
            write_files(partial)
            write_text_atomic(partial / RUN_CONFIG_FILE, config_toml)
            write_text_atomic(partial / STATE_FILE, state.to_json())  # marks the folder complete
            write_manifest(partial)  # last: sizes and hashes of all the others
            shutil.rmtree(target, ignore_errors=True)
            os.replace(partial, target)
    except BaseException as e:  # nothing partial stays (a NaN refusal, a second Ctrl-C, a failed write)
        shutil.rmtree(partial, ignore_errors=True)
        error = e if isinstance(e, OSError) else as_os_error(e, partial) if isinstance(e, RuntimeError) else None
        if error is None:
            raise
        raise save_failed(error, "the checkpoint", target, run_dir) from e
    if acc.is_main_process:
        log.info("checkpoint: %s", target)
        for old in prune_checkpoints(run_dir, state, last_n_steps, last_n_epochs):
            log.info("removed old checkpoint %s", old)
    acc.wait_for_everyone()
    return target
