"""Training options that change a run, each checked where ignoring it would show: gradient accumulation, epochs,
the optimizer's settings, pyramid noise, the TensorBoard log and `resume = "latest"`."""

import re
import shutil

import pytest
import torch
from safetensors.torch import load_file

from loraforge.config import ConfigError, load_config
from loraforge.data.dataset import collate
from loraforge.training.losses import pyramid_noise
from loraforge.training.optim import build_optimizer
from loraforge.training.state import complete_checkpoints
from loraforge.training.trainer import Trainer

from .test_data_training import data_options, images


class FixedDrawsTrainer(Trainer):
    """Noise and timestep of each sample depend on the sample alone (its latent seed), not on the batch it is in."""

    def compute_loss(self, batch, latents=None, noise=None, timesteps=None):
        seeds = batch["latent_seeds"]
        latents = self.encode_latents(batch["pixel_values"], seeds)
        noise = torch.stack([torch.randn(latents.shape[1:], generator=torch.Generator().manual_seed(s))
                             for s in seeds])
        timesteps = torch.tensor([100 + s % 800 for s in seeds])
        return super().compute_loss(batch, latents, noise, timesteps)


def test_gradient_accumulation_equals_the_larger_batch(make_config, tmp_path):
    # 2 images, one optimizer step: batch 2, or batch 1 accumulated twice. The mean loss is the same sum, so plain
    # SGD must make the same update; without accumulation the step would see only the first image.
    folder = images(tmp_path / "img", [(64, 64)] * 2)
    common = data_options(folder, **{"training.max_train_steps": 1, "optimizer.type": "sgd",
                                     "optimizer.learning_rate": 10.0, "optimizer.adam_beta1": 0.0,
                                     "optimizer.adam_weight_decay": 0.0, "optimizer.max_grad_norm": 1e9})
    results = []
    for batch, accumulation in ((2, 1), (1, 2)):
        cfg = make_config("sd15", **common, **{"training.batch_size": batch,
                                               "training.gradient_accumulation_steps": accumulation,
                                               "output.output_name": f"b{batch}"})
        result = FixedDrawsTrainer(cfg).run()
        assert result.steps == 1
        results.append(load_file(str(result.files.kohya)))
    big, accumulated = results
    ups = [k for k in big if k.endswith("lora_up.weight")]
    assert ups and all(big[k].abs().max() > 1e-4 for k in ups)  # the up matrices start at zero: this is the update
    for k in big:
        torch.testing.assert_close(accumulated[k], big[k], rtol=1e-4, atol=1e-7, msg=k)


def test_num_train_epochs_limits_the_steps(make_config, tmp_path):
    # 2 images, batch 2: 1 step an epoch; 2 epochs = 2 steps, before max_train_steps = 3
    folder = images(tmp_path / "img", [(64, 64)] * 2)
    cfg = make_config("sd15", **data_options(folder, **{"training.max_train_steps": 3, "training.num_train_epochs": 2,
                                                        "training.batch_size": 2}))
    t = Trainer(cfg)
    result = t.run()
    assert (t.steps_per_epoch, t.max_steps) == (1, 2)
    assert result.steps == 2 and len(result.losses) == 2
    assert (t.state.epoch, t.state.batch_in_epoch) == (2, 0)


# ------------------------------------------------------------------------------------------------- optimizers
def _opt_cfg(*overrides):
    return load_config(None, list(overrides)).optimizer


def _steps(cfg, n=3):
    """The built optimizer and its update after `n` steps on fixed gradients (the same for every config)."""
    g = torch.Generator().manual_seed(0)
    start = torch.randn(16, 16, generator=g) * 0.1
    grads = [torch.randn(16, 16, generator=g) * 1e-3 for _ in range(n)]
    p = torch.nn.Parameter(start.clone())
    opt = build_optimizer(cfg, [{"params": [p], "lr": cfg.learning_rate}])
    for grad in grads:
        p.grad = grad.clone()
        opt.step()
    return opt, p.detach() - start


@pytest.mark.parametrize("option,value", [("adam_beta1", 0.5), ("adam_beta2", 0.5), ("adam_epsilon", 1e-3)])
def test_adam_options_reach_adamw_and_change_the_update(option, value):
    _, default = _steps(_opt_cfg("optimizer.learning_rate=1e-2"))
    opt, changed = _steps(_opt_cfg("optimizer.learning_rate=1e-2", f"optimizer.{option}={value}"))
    group = opt.param_groups[0]
    setting = {"adam_beta1": group["betas"][0], "adam_beta2": group["betas"][1], "adam_epsilon": group["eps"]}
    assert isinstance(opt, torch.optim.AdamW) and setting[option] == value
    assert not torch.allclose(default, changed, rtol=0.05, atol=0)


def test_adam_options_reach_the_optimizer_of_a_run(make_config):
    t = Trainer(make_config("sd15", **{"optimizer.adam_beta1": 0.8, "optimizer.adam_beta2": 0.95,
                                       "optimizer.adam_epsilon": 1e-6}))
    t.prepare()
    t.close()
    assert [(g["betas"], g["eps"]) for g in t.optimizer.optimizer.param_groups] == [((0.8, 0.95), 1e-6)]


@pytest.mark.parametrize("option,relative", [("adafactor_scale_parameter", False), ("adafactor_warmup_init", True)])
def test_adafactor_options_reach_transformers_adafactor_and_change_the_update(option, relative):
    from transformers.optimization import Adafactor

    base = ["optimizer.type=adafactor", "optimizer.learning_rate=1e-2"]
    if relative:
        base += ["optimizer.adafactor_relative_step=true", "optimizer.lr_scheduler=adafactor"]
    _, default = _steps(_opt_cfg(*base))
    opt, changed = _steps(_opt_cfg(*base, f"optimizer.{option}=true"))
    group = opt.param_groups[0]
    assert isinstance(opt, Adafactor) and group[option.removeprefix("adafactor_")] is True
    assert group["relative_step"] is relative
    assert not torch.allclose(default, changed, rtol=0.05, atol=0)


def test_adafactor_warmup_init_without_relative_step_is_refused():
    with pytest.raises(ConfigError, match="adafactor_warmup_init = true works only with"):
        load_config(None, ["optimizer.type=adafactor", "optimizer.adafactor_warmup_init=true"])


# ------------------------------------------------------------------------------------------------- noise
def test_multires_noise_is_the_noise_of_the_step(make_config):
    t = Trainer(make_config("sd15", **{"training.multires_noise_iterations": 4,
                                       "training.multires_noise_discount": 0.5}))
    t.prepare()
    batch = collate([t.dataset[0]])
    latents = t.encode_latents(batch["pixel_values"], batch["latent_seeds"])
    ts = torch.tensor([300])

    seed = int(batch["noise_seeds"][0])
    num_timesteps = t.noise_scheduler.config.num_train_timesteps

    def sample_noise(iterations=None, discount=None):
        """The sample's own generator (seeded by its noise seed) draws the timestep, then the noise."""
        g = torch.Generator().manual_seed(seed)
        torch.randint(0, num_timesteps, (1,), generator=g)
        noise = torch.randn((1, *latents.shape[1:]), generator=g)
        return noise if iterations is None else pyramid_noise(noise, iterations, discount, g)

    def loss(noise=None):
        with torch.no_grad():
            return t.compute_loss(batch, latents, noise, ts)

    try:
        pyramid = loss()
        assert pyramid == loss(sample_noise(4, 0.5))
        t.cfg.training.multires_noise_discount = 0.9
        other_discount = loss()
        assert other_discount == loss(sample_noise(4, 0.9))
        t.cfg.training.multires_noise_iterations = None
        plain = loss()
        assert plain == loss(sample_noise())
    finally:
        t.close()
    assert pyramid != plain and other_discount != pyramid


def test_attention_backend_is_the_unets_and_computes_the_same_loss(make_config):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    losses = {}
    for backend, processor in (("sdpa", AttnProcessor2_0), ("eager", AttnProcessor)):
        t = Trainer(make_config("sd15", **{"training.attention": backend}))
        t.prepare()
        try:
            kinds = {type(p) for p in t.unet.attn_processors.values()}
            assert kinds == {processor}, (backend, kinds)
            batch = collate([t.dataset[0]])
            latents = t.encode_latents(batch["pixel_values"], batch["latent_seeds"])
            noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                losses[backend] = t.compute_loss(batch, latents, noise, torch.tensor([300])).item()
        finally:
            t.close()
    assert losses["eager"] == pytest.approx(losses["sdpa"], rel=1e-4)


# ------------------------------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("where", ["default", "logging_dir+log_prefix"])
def test_tensorboard_logs_the_loss_and_learning_rate(make_config, tmp_path, where):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = images(tmp_path / "img", [(64, 64)])
    extra = {"output.logging_dir": str(tmp_path / "tb"), "output.log_prefix": "mylora_"} if where != "default" else {}
    cfg = make_config("sd15", **data_options(folder, **{"output.log_with": "tensorboard",
                                                        "training.max_train_steps": 2, **extra}))
    result = Trainer(cfg).run()
    if where == "default":
        event_files = list((result.run_dir / "logs" / "loraforge").glob("events.out.tfevents.*"))
    else:  # kohya's layout: <logging_dir>/<log_prefix><YYYYmmddHHMMSS>/, nothing under the run folder
        subfolders = [p.name for p in (tmp_path / "tb").iterdir()]
        assert len(subfolders) == 1 and re.fullmatch(r"mylora_\d{14}", subfolders[0]), subfolders
        event_files = list((tmp_path / "tb" / subfolders[0]).glob("events.out.tfevents.*"))
        assert not (result.run_dir / "logs").exists()
    assert event_files
    scalars = {}
    for f in event_files:
        acc = EventAccumulator(str(f)).Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    assert [step for step, _ in scalars["loss"]] == [1, 2]
    assert [v for _, v in scalars["loss"]] == pytest.approx(result.losses)
    assert [v for _, v in scalars["lr/unet"]] == pytest.approx([1e-3, 1e-3])


def test_resume_latest_continues_from_the_newest_complete_checkpoint(make_config, tmp_path):
    # 2 images, batch 1, 3 steps: checkpoints at steps 1, 2 and 3 (the final step). The run is made to look
    # interrupted after step 2 (its step-3 checkpoint taken away), and a newer folder is left incomplete by an
    # interrupted save. "latest" is step 2: the resumed run trains step 3 and ends where the uninterrupted run ended.
    folder = images(tmp_path / "img", [(64, 64)] * 2)
    common = data_options(folder, **{"training.max_train_steps": 3, "training.save_every_n_steps": 1})
    first = Trainer(make_config("sd15", **common)).run()
    straight = load_file(str(first.files.kohya))
    assert [p.name for p in complete_checkpoints(first.run_dir)] == ["step-000001", "step-000002", "step-000003"]
    shutil.rmtree(first.run_dir / "checkpoints" / "step-000003")
    (first.run_dir / "checkpoints" / "step-000009").mkdir()  # no train_state.json: incomplete
    resumed = Trainer(make_config("sd15", **common, **{"training.resume": "latest"})).run()
    assert resumed.steps == 3 and resumed.losses == first.losses[2:]
    again = load_file(str(resumed.files.kohya))
    assert again.keys() == straight.keys()
    assert all(torch.equal(again[k], straight[k]) for k in straight)
