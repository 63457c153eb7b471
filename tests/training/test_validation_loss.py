"""The validation loss: held-out images (a folder, a split, the regularisation images) scored at fixed timesteps with
fixed noise, logged beside the training loss; the best LoRA kept; validating leaves the training unchanged."""


import pytest
import torch
from safetensors.torch import load_file

from loraforge.config import ConfigError, load_config
from loraforge.data.subsets import Subset
from loraforge.data.sources import ImageItem
from loraforge.data.validation import split_training_items
from loraforge.errors import DataError
from loraforge.training.metrics import read_metrics
from loraforge.training.report import render_report
from loraforge.training.state import complete_checkpoints, read_state
from loraforge.training.trainer import Trainer
from loraforge.training.validation import fixed_noise, fixed_timesteps

from .test_data_training import data_options, images


def test_fixed_timesteps_and_noise():
    training = load_config(None, []).training
    assert fixed_timesteps(training, 1000) == [200, 400, 600, 800]  # kohya's four
    ranged = load_config(None, ["training.min_timestep=100", "training.max_timestep=300",
                                "training.validation_timesteps=1"]).training
    assert fixed_timesteps(ranged, 1000) == [200]
    a = fixed_noise((4, 8, 8), 1, 0, [200, 400])
    assert torch.equal(a, fixed_noise((4, 8, 8), 1, 0, [200, 400])) and not torch.equal(a[0], a[1])
    assert not torch.equal(a, fixed_noise((4, 8, 8), 1, 1, [200, 400]))  # another image, other noise


def test_split_holds_out_training_images_only():
    subsets = [Subset("img", None), Subset("reg", None, is_reg=True)]
    items = [ImageItem(f"{i}.png", "c", "sidecar", 0) for i in range(10)] + [ImageItem("r.png", "c", "sidecar", 1)]
    kept, held = split_training_items(items, subsets, 0.3, 5)
    assert len(held) == 3 and all(it.subset == 0 for it in held) and len(kept) == 8
    assert {it.path for it in kept} | {it.path for it in held} == {it.path for it in items}
    again, other = split_training_items(items, subsets, 0.3, 5)[1], split_training_items(items, subsets, 0.3, 6)[1]
    assert again == held and other != held  # the validation seed decides
    with pytest.raises(DataError, match="leaves none to train on"):
        split_training_items(items[:1] + items[-1:], subsets, 0.5, 0)


@pytest.mark.parametrize("overrides, message", [
    (["training.validate_every_n_steps=10"], "no validation images"),
    (["training.keep_best_validation=true"], "no validation images"),
    (["training.validation_split=0.1"], "no schedule"),
    (["training.validation_split=1.0", "training.validate_every_n_steps=1"], "validation_split"),
])
def test_validation_options_that_cannot_work_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_reg_images_as_validation_need_reg_images(make_config, tmp_path):
    folder = images(tmp_path / "img", [(64, 64)] * 2)
    cfg = make_config("sd15", **data_options(folder, **{"training.validation_use_reg_images": True,
                                                        "training.validate_every_n_steps": 1}))
    t = Trainer(cfg)
    try:
        with pytest.raises(DataError, match="no regularisation or class images"):
            t.prepare()
    finally:
        t.close()


def test_validation_loss_is_logged_fixed_and_keeps_the_best(make_config, tmp_path):
    folder = images(tmp_path / "img", [(64, 64)] * 4)
    held = images(tmp_path / "held", [(64, 64)], caption="sks robot, blue")
    cfg = make_config("sd15", **data_options(folder, **{
        "training.validation_split": 0.25, "training.validation_data_dir": held, "training.validate_every_n_steps": 2,
        "training.keep_best_validation": True, "training.max_train_steps": 3,
        "optimizer.learning_rate": 1e-2}))
    t = Trainer(cfg)
    t.prepare()
    try:
        assert t.data.run_info["num_train_images"] == 3 and len(t.validation.dataset) == 2  # split + folder
        held_paths = {str(it.path) for it in t.validation.dataset.items}
        assert not held_paths & {str(it.path) for it in t.dataset.items}
        # fixed noise and timesteps: the same LoRA scores the same, whenever it is asked
        first = t.validation.evaluate(t.step)
        assert t.validation.evaluate(t.step) == first
        logged = []
        log_to_trackers = t.accelerator.log
        t.accelerator.log = lambda values, step=None: logged.append((step, dict(values))) or log_to_trackers(values, step)
        t.train()
        result = t.finish()
    finally:
        t.close()
    steps = [s for s, _ in result.validation_losses]
    assert steps == [2, 3]  # every 2 steps, and the last step
    assert all(v != first for _, v in result.validation_losses)  # the trained LoRA scores differently
    best_step, best = min(result.validation_losses, key=lambda sv: sv[1])
    kept = result.run_dir / "best" / "run-sd15-best.safetensors"
    assert kept.is_file() and load_file(str(kept))
    final_state = read_state(complete_checkpoints(result.run_dir)[-1])
    assert (final_state.best_validation_step, final_state.best_validation_loss) == (best_step, best)
    # beside the training loss, in the trackers (TensorBoard / W&B) and the run log
    assert [(step, v["loss/validation"]) for step, v in logged if "loss/validation" in v] == result.validation_losses
    assert [step for step, v in logged if "loss" in v] == [1, 2, 3]
    log = (result.run_dir / "train.log").read_text()
    assert f"step 2: validation loss {result.validation_losses[0][1]:.5f}" in log
    # in metrics.jsonl and the run's report (a third series in its loss plot)
    lines = [(r["step"], r["loss"]) for r in read_metrics(result.run_dir) if r["kind"] == "validation"]
    assert lines == result.validation_losses
    page = render_report(result.run_dir)
    assert 'data-name="validation"' in page.split("learning rate per group")[0]


def test_validating_does_not_change_the_training(make_config, tmp_path):
    folder = images(tmp_path / "img", [(64, 64)] * 3)
    images(tmp_path / "reg" / "1_robot", [(64, 64)] * 2, caption="robot")  # kohya's <repeats>_<class> folders
    reg = str(tmp_path / "reg")
    files = []
    for name, extra in (("plain", {}), ("validated", {"training.validation_use_reg_images": True,
                                                       "training.validate_every_n_steps": 1})):
        cfg = make_config("sd15", **data_options(folder, **{"dataset.reg_data_dir": reg, "training.max_train_steps": 2,
                                                            "output.output_name": name, "network.dropout": 0.3, **extra}))
        result = Trainer(cfg).run()
        assert len(result.validation_losses) == (2 if extra else 0)
        files.append(load_file(str(result.files.kohya)))
    plain, validated = files
    assert plain.keys() == validated.keys()
    for k in plain:
        assert torch.equal(plain[k], validated[k]), k
