"""metrics.jsonl: the run's own record of its progress (read by the web UI and report.html)."""

import math
import os
import signal

import pytest

from loraforge.errors import RunInterruptedError
from loraforge.training.metrics import MetricsLog, read_metrics, step_series
from loraforge.training.trainer import Trainer


def test_a_run_writes_start_steps_samples_checkpoints_and_end(make_config):
    cfg = make_config("sd15", **{"training.max_train_steps": 3, "sampling.sample_every_n_steps": 2,
                                 "training.save_every_n_steps": 2, "optimizer.max_grad_norm": 1.0})
    result = Trainer(cfg).run()
    records = read_metrics(result.run_dir)
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "start" and kinds[-1] == "end" and records[-1]["status"] == "done"
    steps = step_series(records)
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert [r["loss"] for r in steps] == pytest.approx(result.losses)
    assert all(r["max_steps"] == 3 and r["memory_mb"] > 0 and r["grad_norm"] > 0 for r in steps)
    assert set(steps[0]["lr"]) and all(v > 0 for v in steps[0]["lr"].values())
    # the smoothed loss is a bias-corrected moving average: the first equals the first loss, the rest lie between
    assert steps[0]["loss_smooth"] == pytest.approx(steps[0]["loss"], rel=1e-5)
    lo, hi = min(result.losses), max(result.losses)
    assert all(lo - 1e-6 <= r["loss_smooth"] <= hi + 1e-6 for r in steps)
    assert steps[-1]["it_s"] > 0 and steps[-1]["eta_s"] == 0
    sample = next(r for r in records if r["kind"] == "sample")
    assert sample["step"] == 2 and sample["files"] and all((result.run_dir / f).is_file() for f in sample["files"])
    ckpt = next(r for r in records if r["kind"] == "checkpoint")
    assert ckpt["step"] == 2 and (result.run_dir / ckpt["path"] / "train_state.json").is_file()


def test_a_stopped_run_says_so_and_its_resume_appends(make_config, monkeypatch):
    real, calls = Trainer.compute_loss, []

    def compute_loss(self, batch, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, batch, *args, **kwargs)

    monkeypatch.setattr(Trainer, "compute_loss", compute_loss)
    with pytest.raises(RunInterruptedError):
        Trainer(make_config("sd15", **{"training.max_train_steps": 4})).run()
    monkeypatch.undo()
    done = Trainer(make_config("sd15", **{"training.max_train_steps": 4, "training.resume": "latest"})).run()
    records = read_metrics(done.run_dir)
    ends = [r for r in records if r["kind"] == "end"]
    assert [e["status"] for e in ends] == ["stopped", "done"] and "Ctrl-C" in ends[0]["message"]
    starts = [r for r in records if r["kind"] == "start"]
    assert [(s["step"], s["resumed"]) for s in starts] == [(0, False), (2, True)]
    assert [r["step"] for r in step_series(records)] == [1, 2, 3, 4]


def test_a_fresh_run_with_overwrite_starts_a_new_record(make_config):
    cfg = make_config("sd15", **{"training.max_train_steps": 2, "output.overwrite": True})
    Trainer(cfg).run()
    run = Trainer(cfg).run().run_dir
    assert [r["kind"] for r in read_metrics(run)].count("start") == 1


def test_nan_is_written_as_a_string_and_a_torn_last_line_is_skipped(tmp_path):
    log = MetricsLog(tmp_path)
    log.start(run_id="x", max_steps=2, step=0, resumed=False)
    first = log.step(step=1, epoch=0, max_steps=2, loss=0.5, lrs={"unet": 1e-4})
    log.step(step=2, epoch=0, max_steps=2, loss=math.nan, lrs={"unet": 1e-4})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "step", "st')
    steps = step_series(read_metrics(tmp_path))
    assert [r["loss"] for r in steps] == [0.5, "nan"]
    assert first["loss_smooth"] == pytest.approx(0.5) and steps[1]["loss_smooth"] == pytest.approx(0.5)
    assert not (tmp_path / "other").exists() and read_metrics(tmp_path / "other") == []
