"""Faults at save time lose nothing: a full disk or a folder that became read-only at a checkpoint or at the final
write is a `SaveFailedError` naming the path, the cause, the fix and the resume; the checkpoints written before stay
complete, nothing partial is left, and what a killed save left behind is removed at the next start."""

import errno
import os

import pytest
import safetensors.torch

from loraforge.errors import SaveFailedError
from loraforge.training.trainer import Trainer


def _leftovers(run) -> list[str]:
    """Temporary files and partial folders under the run folder."""
    return sorted(str(p.relative_to(run)) for p in run.rglob(".*"))


def _fail_writes(monkeypatch, code: int, when) -> None:
    """Make every safetensors write whose path satisfies `when` fail with OSError(code) after writing 0 bytes."""
    real = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):
        if when(str(filename)):
            open(filename, "wb").close()  # what a full disk leaves: an empty file
            raise OSError(code, os.strerror(code), str(filename))
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)


def test_a_full_disk_at_a_checkpoint_keeps_the_last_one_and_resume_goes_on(make_config, monkeypatch, caplog):
    cfg = dict(**{"training.max_train_steps": 3, "training.save_every_n_steps": 1})
    _fail_writes(monkeypatch, errno.ENOSPC, lambda f: "step-000002" in f)
    with pytest.raises(SaveFailedError) as e:
        Trainer(make_config("sd15", **cfg)).run()
    run = Trainer(make_config("sd15", **cfg)).run_dir
    ckpts = run / "checkpoints"
    msg = str(e.value)
    for part in (str(ckpts / "step-000002"), "the disk is full", "No space left on device", "Free space",
                 "MiB", f"last complete checkpoint, {ckpts / 'step-000001'}, is kept", 'training.resume = "latest"'):
        assert part in msg, (part, msg)
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000001"]  # no partial step-000002 folder
    assert _leftovers(run) == []
    assert not (run / "run-sd15.safetensors").exists()

    # what a killed save leaves (a partial checkpoint, temporaries, diffusers' scratch folder) goes at the next start
    stale = [run / ".run-sd15.safetensors.tmp-abc123.safetensors", ckpts / ".step-000004.tmp-partial",
             run / ".pytorch_lora_weights.safetensors.tmp-diffusers-x1y2", ckpts / ".step-000004.tmp-partial" / ".network.safetensors.tmp-q"]
    for path in stale[1:3]:
        path.mkdir(parents=True)
    for path in stale[::3]:
        path.write_bytes(b"")
    keep = run / "notes.tmp"
    keep.write_text("mine")
    caplog.set_level("INFO", logger="loraforge")
    monkeypatch.undo()
    done = Trainer(make_config("sd15", **cfg, **{"training.resume": "latest"})).run()
    assert done.steps == 3 and len(done.losses) == 2 and done.files.kohya.is_file()
    assert _leftovers(run) == [] and keep.read_text() == "mine"
    for path in stale[:3]:
        assert f"removed {path} (left by an interrupted save)" in caplog.text


def test_a_full_disk_at_the_final_write_leaves_no_empty_file_and_resume_writes_it(make_config, monkeypatch):
    cfg = {"training.max_train_steps": 2}
    _fail_writes(monkeypatch, errno.ENOSPC, lambda f: "/.run-sd15.safetensors" in f)
    with pytest.raises(SaveFailedError, match="could not write the LoRA files .*: the disk is full") as e:
        Trainer(make_config("sd15", **cfg)).run()
    run = Trainer(make_config("sd15", **cfg)).run_dir
    assert f"{run / 'checkpoints' / 'step-000002'}, is kept" in str(e.value)  # the last step's checkpoint
    assert _leftovers(run) == [] and not (run / "run-sd15.safetensors").exists()
    assert not (run / "config.toml").exists()  # not marked finished

    monkeypatch.undo()
    done = Trainer(make_config("sd15", **cfg, **{"training.resume": "latest"})).run()
    assert done.steps == 2 and done.losses == [] and done.files.kohya.stat().st_size > 0


def test_permission_denied_at_the_first_checkpoint(make_config, monkeypatch):
    """A folder that became read-only (simulated: root may write anywhere): no checkpoint yet, so the message says to
    start again; the stale temporary the failed cleanup could not remove goes at the next start, logged."""
    _fail_writes(monkeypatch, errno.EACCES, lambda f: "network.safetensors" in f)
    with pytest.raises(SaveFailedError) as e:
        Trainer(make_config("sd15", **{"training.max_train_steps": 2, "training.save_every_n_steps": 1})).run()
    msg = str(e.value)
    assert "permission denied" in msg and "chmod u+w" in msg and "No checkpoint was written yet" in msg, msg


def test_a_read_only_run_folder_at_a_checkpoint(make_config, monkeypatch):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod does not stop root from writing (the EACCES case is simulated above)")
    real = Trainer.save_checkpoint

    def then_read_only(self):
        out = real(self)
        os.chmod(out.parent, 0o555)
        return out

    monkeypatch.setattr(Trainer, "save_checkpoint", then_read_only)
    cfg = make_config("sd15", **{"training.max_train_steps": 3, "training.save_every_n_steps": 1})
    try:
        with pytest.raises(SaveFailedError, match="permission denied") as e:
            Trainer(cfg).run()
        assert "step-000001, is kept" in str(e.value)
    finally:
        os.chmod(Trainer(cfg).run_dir / "checkpoints", 0o755)
    assert sorted(p.name for p in (Trainer(cfg).run_dir / "checkpoints").iterdir()) == ["step-000001"]


def test_a_failed_torch_save_counts_as_a_write_error(tmp_path):
    """torch.save (the optimizer state in a checkpoint) reports a full disk as a RuntimeError."""
    from loraforge.training.state import as_os_error

    err = as_os_error(RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing "
                                   "file data/0: file write failed"), tmp_path)
    assert isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EIO) and "file write failed" in str(err)
    assert as_os_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), tmp_path) is None


def test_the_message_fits_the_cause(tmp_path):
    from loraforge.training.state import save_failed

    ckpt = tmp_path / "checkpoints" / "step-000003"
    ckpt.mkdir(parents=True)
    (ckpt / "train_state.json").write_text("{}")
    (ckpt / "network.safetensors").write_bytes(b"x" * 3 * 2**20)
    full = str(save_failed(OSError(errno.ENOSPC, "No space left on device", "f"), "the LoRA files", tmp_path, tmp_path))
    assert "the disk is full (f: No space left on device). Free space on that disk (a checkpoint takes 3.0 MiB)" in full
    assert f"{ckpt}, is kept" in full
    ro = str(save_failed(OSError(errno.EROFS, "Read-only file system"), "the checkpoint", ckpt, tmp_path))
    assert "the filesystem is read-only" in ro and "Remount it read-write, then go on" in ro and "MiB" not in ro
    other = str(save_failed(OSError(errno.EIO, "Input/output error"), "the checkpoint", ckpt, tmp_path))
    assert "could not write the checkpoint" in other and "Input/output error" in other and "Fix the cause" in other
