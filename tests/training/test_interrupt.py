"""Ctrl-C during training: the first SIGINT finishes the current step, saves a checkpoint of it and stops with exit
code 130; a second one stops at once; either way `training.resume = "latest"` goes on."""

import os
import signal
import subprocess
import sys

import pytest

from loraforge.config import dump_config
from loraforge.errors import RunInterruptedError
from loraforge.training.trainer import Trainer


def _sigint_on_call(monkeypatch, call: int, times: int) -> None:
    """Send this process `times` SIGINTs during the `call`-th loss computation (1-based)."""
    real, calls = Trainer.compute_loss, []

    def compute_loss(self, batch, *args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
        return real(self, batch, *args, **kwargs)

    monkeypatch.setattr(Trainer, "compute_loss", compute_loss)


def test_ctrl_c_saves_the_current_step_and_resume_goes_on(make_config, monkeypatch):
    before = signal.getsignal(signal.SIGINT)
    _sigint_on_call(monkeypatch, call=2, times=1)
    cfg = {"training.max_train_steps": 4}
    with pytest.raises(RunInterruptedError) as e:
        Trainer(make_config("sd15", **cfg)).run()
    run = Trainer(make_config("sd15", **cfg)).run_dir
    ckpt = run / "checkpoints" / "step-000002"
    assert e.value.exit_code == 130
    assert f"stopped by Ctrl-C after step 2 of 4: the checkpoint {ckpt} holds it" in str(e.value)
    assert 'training.resume = "latest"' in str(e.value)
    assert (ckpt / "train_state.json").is_file() and sorted(p.name for p in ckpt.parent.iterdir()) == [ckpt.name]
    assert signal.getsignal(signal.SIGINT) is before  # the handler is restored
    assert not (run / "run-sd15.safetensors").exists()

    monkeypatch.undo()
    done = Trainer(make_config("sd15", **cfg, **{"training.resume": "latest"})).run()
    assert done.steps == 4 and len(done.losses) == 2


def test_a_second_ctrl_c_stops_at_once(make_config, monkeypatch):
    before = signal.getsignal(signal.SIGINT)
    _sigint_on_call(monkeypatch, call=2, times=2)
    cfg = make_config("sd15", **{"training.max_train_steps": 4, "training.save_every_n_steps": 1})
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg).run()
    ckpts = Trainer(cfg).run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000001"]  # step 2 was never finished
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_on_the_command_line(make_config, tmp_path):
    """The CLI: SIGINT once the first checkpoint is logged; exit code 130, the message, no traceback; the checkpoint
    of the step it stopped at is complete and the run resumes from it."""
    cfg = make_config("sd15", **{"training.max_train_steps": 6, "training.save_every_n_steps": 2})
    config = tmp_path / "run.toml"
    config.write_text(dump_config(cfg), encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "loraforge", "train", str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = []
    for line in proc.stderr:
        err.append(line)
        if "checkpoint:" in line and "step-000002" in line:
            proc.send_signal(signal.SIGINT)
            break
    err += proc.stderr.read()
    err = "".join(err)
    assert proc.wait(timeout=300) == 130, err[-3000:]
    assert "Traceback" not in err and "error: stopped by Ctrl-C after step " in err, err[-3000:]
    step = int(err.split("stopped by Ctrl-C after step ")[1].split()[0])
    # the step running when Ctrl-C came, finished and saved (2 when the signal lands before step 3 starts)
    assert 2 <= step < 6, err[-3000:]
    run = Trainer(cfg).run_dir
    assert (run / "checkpoints" / f"step-{step:06d}" / "train_state.json").is_file()
    assert f"the checkpoint {run / 'checkpoints' / f'step-{step:06d}'} holds it" in err

    done = Trainer(make_config("sd15", **{"training.max_train_steps": 6, "training.save_every_n_steps": 2,
                                          "training.resume": "latest"})).run()
    assert done.steps == 6 and len(done.losses) == 6 - step
