"""NaN and Inf in a run (`training.on_nonfinite`): a diverging run stops with the step, the learning rate and the fixes
and writes no final file; "skip" leaves out a bad step and goes on; no LoRA file with NaN / Inf is ever written."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loraforge.errors import NonFiniteError
from loraforge.training.nonfinite import NonFiniteGuard
from loraforge.training.outputs import write_lora_files
from loraforge.training.trainer import Trainer

from ..networks.helpers import build


def test_a_diverging_run_stops_with_the_step_the_rate_and_the_fixes(tmp_path, tiny_dirs):
    """lr 1e6: the loss is NaN from step 2. The CLI exits non-zero with the message; the checkpoint of step 1 stays
    complete and finite; no final LoRA file and no finished-run marker are written."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "loraforge", "train", "--set", f"output.output_dir={str(tmp_path)!r}",
           "--set", "training.max_train_steps=3", "--set", "training.save_every_n_steps=1", "--set", "network.rank=4",
           "--set", "optimizer.learning_rate=1e6", "--set", "output.log_with='none'", "--set", "sampling.at_end=false"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr
    assert "error: step 2: the loss and the gradients became NaN or infinite at learning rate unet 1e+06" in err, err
    for fix in ("optimizer.learning_rate", "training.no_half_vae = true", 'training.mixed_precision = "bf16"'):
        assert fix in err
    assert "Traceback" not in err and "done:" not in proc.stdout
    run = tmp_path / "lora"
    assert not (run / "lora.safetensors").exists() and not (run / "pytorch_lora_weights.safetensors").exists()
    assert not (run / "config.toml").exists()
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step-000001"], ckpts  # the good checkpoint, and nothing of the bad step
    assert f"{run / 'checkpoints' / 'step-000001'}, is kept and resumable" in err
    for value in load_file(str(run / "checkpoints" / "step-000001" / "lora-step00000001.safetensors")).values():
        assert torch.isfinite(value).all()


def _nan_on_calls(monkeypatch, bad_calls) -> list:
    """Make `compute_loss` return NaN on the given calls (1-based); returns the list of calls made."""
    calls = []
    real = Trainer.compute_loss

    def flaky(self, batch, *args, **kwargs):
        loss = real(self, batch, *args, **kwargs)
        calls.append(len(calls) + 1)
        return loss * float("nan") if bad_calls(len(calls)) else loss

    monkeypatch.setattr(Trainer, "compute_loss", flaky)
    return calls


def test_skip_leaves_out_a_nan_batch_and_goes_on(make_config, monkeypatch, caplog):
    calls = _nan_on_calls(monkeypatch, lambda n: n == 2)
    result = Trainer(make_config("sd15", **{"training.max_train_steps": 3, "training.on_nonfinite": "skip"})).run()
    assert len(calls) == 4 and result.steps == 3  # the skipped batch does not count as a step
    assert len(result.losses) == 3 and all(math.isfinite(x) for x in result.losses)
    assert "step 2: the loss and the gradients became NaN/Inf" in caplog.text
    assert "optimizer step skipped" in caplog.text
    assert "NaN/Inf: 1 optimizer step(s) skipped in this run" in caplog.text
    # had the NaN gradients reached the optimizer, every weight would be NaN (and the save refused)
    for value in load_file(str(result.files.kohya)).values():
        assert torch.isfinite(value).all()


def test_nan_gradients_under_a_finite_loss_stop_the_run(make_config, monkeypatch):
    real = Trainer.compute_loss
    calls = []

    def bad_gradients(self, batch, *args, **kwargs):
        loss = real(self, batch, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # sqrt(0) adds 0 to the loss and 0 · ∞ = NaN to the gradient of the first tensor
            loss = loss + torch.sqrt(self.trainable_parameters()[0].sum() * 0)
        return loss

    monkeypatch.setattr(Trainer, "compute_loss", bad_gradients)
    with pytest.raises(NonFiniteError, match=r"^step 2: the gradients became NaN or infinite at learning rate unet "):
        Trainer(make_config("sd15", **{"training.max_train_steps": 3})).run()


class _Accelerator:
    """What the guard uses of accelerate's Accelerator; one process, so `reduce` is the identity."""

    device = torch.device("cpu")

    def __init__(self, scaler=None):
        self.scaler, self.sync_gradients = scaler, True

    def reduce(self, tensor, reduction):
        return tensor


def test_the_guard_remembers_a_nan_micro_batch_and_leaves_inf_gradients_to_the_fp16_scaler(make_config, tmp_path):
    cfg = make_config("sd15").training
    param = torch.nn.Parameter(torch.zeros(2))
    param.grad = torch.zeros(2)
    acc = _Accelerator()
    guard = NonFiniteGuard(cfg, acc, tmp_path)
    acc.sync_gradients = False  # gradient accumulation: a NaN in the first micro-batch...
    assert guard.check(torch.tensor(float("nan")), [param], 1, {"unet": 1e-4}) is False
    acc.sync_gradients = True  # ...stops the step at the last one
    with pytest.raises(NonFiniteError, match=r"^step 1: the loss became NaN or infinite at learning rate unet 0.0001"):
        guard.check(torch.tensor(0.5), [param], 1, {"unet": 1e-4})

    param.grad = torch.full((2,), float("inf"))  # under fp16, accelerate's GradScaler skips such steps itself
    guard = NonFiniteGuard(cfg, _Accelerator(scaler=object()), tmp_path)
    assert guard.check(torch.tensor(0.5), [param], 1, {"unet": 1e-4}) is False
    with pytest.raises(NonFiniteError, match=r"^step 2: the loss became"):
        guard.check(torch.tensor(float("inf")), [param], 2, {"unet": 1e-4})


def test_skip_stops_after_the_limit_of_skips_in_a_row(make_config, monkeypatch):
    calls = _nan_on_calls(monkeypatch, lambda n: n >= 2)
    cfg = make_config("sd15", **{"training.max_train_steps": 4, "training.on_nonfinite": "skip",
                                 "training.nonfinite_skip_limit": 2})
    with pytest.raises(NonFiniteError, match=r"step 2: the loss and the gradients .* skipped 2 steps in a row"):
        Trainer(cfg).run()
    assert len(calls) == 3
    run = Path(cfg.output.output_dir) / cfg.output.output_name
    assert not list(run.glob("*.safetensors"))


def test_nothing_is_written_when_a_tensor_is_not_finite(tiny_models, make_config, tmp_path):
    model, net = build(tiny_models("sd15"), "sd15")
    param = net.parameters("unet")[0]
    with torch.no_grad():
        param.zero_()
        param[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"not writing .*x\.safetensors.*1 NaN of \d+ values"):
        write_lora_files(make_config("sd15"), net, model, {}, tmp_path / "nan", "x")
    with torch.no_grad():
        param[0, 0] = 1e6  # finite in fp32, Inf in fp16
    cfg = make_config("sd15", **{"output.save_precision": "fp16"})
    with pytest.raises(NonFiniteError, match=r"1 Inf of \d+ values.*±65504"):
        write_lora_files(cfg, net, model, {}, tmp_path / "inf", "x")
    assert not (tmp_path / "nan").exists() and not (tmp_path / "inf").exists()
