"""Paired prior-preservation batches in a real (tiny SD 1.5, 64 px) run: every step's UNet call holds the training
images and as many class images, the loss is diffusers' instance mean + prior_loss_weight × class mean (mixed keeps
kohya's weighted mean), and the plan (`--dry-run`) and the training log say which batching is used."""

import logging

import pytest
import torch
from PIL import Image

from loraforge.cli.commands import _dry_run
from loraforge.config import dump_config
from loraforge.training.losses import paired_prior_loss
from loraforge.training.plan import plan_run
from loraforge.training.trainer import Trainer


def _images(folder, n, color):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (64, 64), (color, 30 * i, 90)).save(folder / f"{i}.png")
    return str(folder)


def _cfg(make_config, tmp_path, **kw):
    return make_config("sd15", **{
        "dataset.instance_dir": _images(tmp_path / "inst", 2, 200), "dataset.instance_prompt": "a photo of sks robot",
        "dataset.with_prior_preservation": True, "dataset.class_data_dir": _images(tmp_path / "cls", 4, 20),
        "dataset.class_prompt": "a photo of a robot", "dataset.num_class_images": 4, "dataset.prior_loss_weight": 0.5,
        "training.batch_size": 2, "training.max_train_steps": 2, **kw})


def test_the_paired_loss_is_the_instance_mean_plus_the_weighted_class_mean():
    per_sample = torch.tensor([1.0, 3.0, 1.0, 3.0])  # class samples already weighted by prior_loss_weight 0.5
    is_reg = torch.tensor([False, False, True, True])
    # (1 + 3) / 2 + 0.5 · (2 + 6) / 2 = 2 + 2; the kohya mean of the same weighted losses would be 2
    assert paired_prior_loss(per_sample, is_reg).item() == pytest.approx(4.0)
    assert paired_prior_loss(torch.tensor([1.0, 3.0, 2.0]), torch.tensor([False, True, True])).item() == 3.5
    assert paired_prior_loss(per_sample, torch.zeros(4, dtype=torch.bool)).item() == 2.0


def test_paired_steps_hold_both_kinds_and_split_the_loss_as_diffusers(make_config, tmp_path):
    t = Trainer(_cfg(make_config, tmp_path, **{"dataset.prior_batches": "paired"}))
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger("loraforge")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)  # the CLI may have stopped its propagation to the root
    try:
        t.prepare()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    try:
        seen, unet_batches = [], []
        unet, compute = t.step.unet, t.compute_loss

        def spy_unet(sample, *a, **kw):
            unet_batches.append(sample.shape[0])
            return unet(sample, *a, **kw)

        def spy_loss(batch, *a):
            seen.append((batch["is_reg"].tolist(), batch["loss_weights"].tolist()))
            return compute(batch, *a)

        t.step.unet, t.compute_loss = spy_unet, spy_loss
        t.train()
        # 4 pairs an epoch (max(2 training, 4 class)), 2 pairs a batch: each step's one UNet call holds 2 + 2 images
        assert seen == [([False, False, True, True], [1.0, 1.0, 0.5, 0.5])] * 2 and unet_batches == [4, 4]

        batch = next(iter(t.train_dataloader))
        latents = t.encode_latents(batch["pixel_values"], batch["latent_seeds"])
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
        steps = torch.tensor([100, 300, 500, 700])
        with torch.no_grad():
            paired = t.compute_loss(batch, latents, noise, steps).item()
            alone = [t.compute_loss({"captions": batch["captions"][i:i + 1], "loss_weights": torch.ones(1),
                                     "is_reg": batch["is_reg"][i:i + 1]}, latents[i:i + 1], noise[i:i + 1],
                                    steps[i:i + 1]).item() for i in range(4)]
            t.step.prior_batches = "mixed"
            mixed = t.compute_loss(batch, latents, noise, steps).item()
        inst, cls = alone[:2], alone[2:]
        assert paired == pytest.approx(sum(inst) / 2 + 0.5 * sum(cls) / 2, rel=1e-4)  # diffusers
        assert mixed == pytest.approx((sum(inst) + 0.5 * sum(cls)) / 4, rel=1e-4)  # kohya
    finally:
        t.close()
    line = ("prior preservation: paired batches (diffusers): each batch holds 2 training + 2 class images, 4 images "
            "a step; loss = training mean + 0.5 (prior_loss_weight) × class mean; an epoch is 4 pairs")
    assert t.plan.prior_line(t.cfg).startswith(line)
    assert sum(r.getMessage().startswith(line) for r in records) == 1  # the training log says it


def test_the_dry_run_says_which_batching_is_used(make_config, tmp_path, capsys):
    paired = _cfg(make_config, tmp_path, **{"dataset.prior_batches": "paired",
                                            "training.gradient_accumulation_steps": 3})
    assert _dry_run(paired, dump_config) == 0
    printed = capsys.readouterr().err
    assert "# prior preservation: paired batches (diffusers): each batch holds 2 training + 2 class images, " \
           "12 images a step" in printed
    mixed = plan_run(_cfg(make_config, tmp_path))
    assert mixed.prior_batches == "mixed"
    assert "prior preservation: mixed batches (kohya): class images are shuffled into the batches of 2 images " \
           "(2 images a step)" in mixed.describe(_cfg(make_config, tmp_path))
    plain = make_config("sd15", **{"dataset.instance_dir": str(tmp_path / "inst"), "dataset.instance_prompt": "x"})
    assert "prior preservation" not in plan_run(plain).describe(plain)
    # class images still to generate: the plan counts without them and says the pairs come later
    missing = _cfg(make_config, tmp_path, **{"dataset.prior_batches": "paired", "dataset.num_class_images": 6})
    assert "an epoch is counted once the class images exist" in plan_run(missing).describe(missing)
