"""A run folder belongs to one run: a fresh start is refused where another run left checkpoints (or clears them with
`output.overwrite`), and a resume is refused when the checkpoint's config differs in what shapes the weights, or when
the folder holds another run's checkpoints."""

import json
import shutil

import pytest

from loraforge.errors import RunFolderError
from loraforge.training.trainer import Trainer


def _interrupted(make_config, **overrides):
    """A run stopped before its final files (Ctrl-C); by default 3 steps with a checkpoint at step 2. Returns the run
    folder and its checkpoints."""
    cfg = make_config("sd15", **{"training.max_train_steps": 3, "training.save_every_n_steps": 2, **overrides})
    trainer = Trainer(cfg)
    trainer.prepare()
    try:
        trainer.train()
    finally:
        trainer.close()
    run = trainer.run_dir
    assert not (run / "config.toml").exists()
    return run, sorted((run / "checkpoints").glob("step-*"))


def _run_id(checkpoint) -> str:
    return json.loads((checkpoint / "train_state.json").read_text())["run_id"]


def test_a_fresh_start_is_refused_where_checkpoints_are_and_overwrite_clears_them(make_config, tmp_path):
    run, [ckpt] = _interrupted(make_config)
    old_id = _run_id(ckpt)
    with pytest.raises(RunFolderError) as e:
        Trainer(make_config("sd15", **{"training.max_train_steps": 3})).run()
    for part in (str(run), "step-000002", 'training.resume = "latest"', "output.overwrite = true",
                 "output.output_name"):
        assert part in str(e.value), part
    assert ckpt.is_dir()  # untouched

    elsewhere = tmp_path / "elsewhere" / ckpt.name
    shutil.copytree(ckpt, elsewhere)
    new_run, new_ckpts = _interrupted(make_config, **{"output.overwrite": True, "training.max_train_steps": 2,
                                                      "training.save_every_n_steps": 1})
    assert new_run == run and [p.name for p in new_ckpts] == ["step-000001"]  # the old step-000002 is gone
    assert _run_id(new_ckpts[0]) != old_id

    # the old run's checkpoint, resumed into the folder of the new one, would mix two runs
    with pytest.raises(RunFolderError, match=r"holds checkpoints of another run \(step-000001\)"):
        Trainer(make_config("sd15", **{"training.max_train_steps": 3, "training.resume": str(elsewhere)})).run()


def test_a_resume_refuses_a_changed_config_and_allows_a_longer_run(make_config):
    run, [ckpt] = _interrupted(make_config)
    assert "rank = 4" in (ckpt / "config.toml").read_text()
    changed = {"training.max_train_steps": 5, "training.resume": "latest", "network.rank": 8,
               "optimizer.learning_rate": 1e-4}
    with pytest.raises(RunFolderError) as e:
        Trainer(make_config("sd15", **changed)).run()
    # max_train_steps and resume may change, so they are not listed
    assert e.value.problems == ["network.rank: 4 → 8", "optimizer.learning_rate: 0.001 → 0.0001"]
    assert "differ: network.rank, optimizer.learning_rate" in str(e.value) and str(ckpt / "config.toml") in str(e.value)

    result = Trainer(make_config("sd15", **{"training.max_train_steps": 5, "training.resume": "latest",
                                            "training.save_every_n_steps": 2})).run()
    assert result.steps == 5 and len(result.losses) == 3
    assert _run_id(run / "checkpoints" / "step-000004") == _run_id(ckpt)  # the same run, continued


def test_a_finished_run_continues_from_its_last_step(make_config):
    finished = Trainer(make_config("sd15", **{"training.max_train_steps": 2})).run()
    last = finished.run_dir / "checkpoints" / "step-000002"
    assert (last / "train_state.json").is_file()  # the final step is a checkpoint
    assert (finished.run_dir / "run-sd15.safetensors").is_file()
    # only the length changes: allowed, and the run goes on from step 2 (one more step, not three)
    longer = Trainer(make_config("sd15", **{"training.max_train_steps": 3, "training.resume": "latest"})).run()
    assert longer.steps == 3 and len(longer.losses) == 1
    assert _run_id(longer.run_dir / "checkpoints" / "step-000003") == _run_id(last)
