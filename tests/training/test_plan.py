"""One run plan for `--dry-run` and training: the same resolution, images, steps, epochs and warm-up."""

import json
import logging
import shutil

import pytest
from PIL import Image

from loraforge.cli.commands import _dry_run
from loraforge.config import dump_config
from loraforge.errors import ConfigError, DataError
from loraforge.training.plan import plan_run
from loraforge.training.trainer import Trainer


def _images(folder, n, size, color=(200, 40, 40)):
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", size, (color[0], color[1] + 30 * i, color[2])).save(folder / f"{i}.png")
    return folder


def _sdxl_folder_config(make_config, tiny_dirs, tmp_path, **overrides):
    """A config naming an SDXL diffusers folder with `model.family = auto` whose UNet config says 1024 px (the tiny
    model's weights, the full-size `sample_size`): the family and the native size are known only from the folder."""
    folder = tmp_path / "sdxl-folder"
    if not folder.exists():
        shutil.copytree(tiny_dirs["sdxl"], folder)
        unet_config = folder / "unet" / "config.json"
        unet_config.write_text(json.dumps({**json.loads(unet_config.read_text()), "sample_size": 128}))
    return make_config("auto", **{"model.pretrained_model_name_or_path": str(folder),
                                  "dataset.instance_dir": str(tmp_path / "img"),
                                  "dataset.instance_prompt": "a photo of sks robot", **overrides})


def test_dry_run_and_training_refuse_the_same_small_images(make_config, tiny_dirs, tmp_path, capsys):
    # 320 px images: fine at 512 px (what the dry run used to assume), too small for SDXL's 1024 px (min 512)
    _images(tmp_path / "img", 2, (320, 320))
    cfg = _sdxl_folder_config(make_config, tiny_dirs, tmp_path)
    with pytest.raises(DataError) as dry:
        _dry_run(cfg, dump_config)
    t = Trainer(cfg)
    with pytest.raises(DataError) as train:
        try:
            t.prepare()
        finally:
            t.close()
    assert "2 of 2 image(s) cannot be used" in str(dry.value)
    assert dry.value.problems == train.value.problems
    assert all("at least 512 px" in p for p in dry.value.problems)


def test_dry_run_prints_the_plan_training_uses(make_config, tiny_dirs, tmp_path, capsys):
    _images(tmp_path / "img", 3, (96, 96))
    cfg = _sdxl_folder_config(make_config, tiny_dirs, tmp_path, **{
        "dataset.resolution": 64, "training.max_train_steps": None, "training.num_train_epochs": 2,
        "training.batch_size": 2, "optimizer.lr_scheduler": "constant_with_warmup", "optimizer.lr_warmup_steps": 3})
    assert _dry_run(cfg, dump_config) == 0
    printed = capsys.readouterr().err
    t = Trainer(cfg)
    try:
        t.prepare()
    finally:
        t.close()
    assert t.plan == plan_run(cfg)
    assert (t.plan.family.name, t.plan.resolution, t.plan.max_steps, t.plan.num_epochs) == ("sdxl", (64, 64), 4, 2)
    assert t.max_steps == 4 and t.resolution == (64, 64)
    for line in t.plan.describe(cfg).splitlines():
        assert f"# {line}" in printed
    assert "warm-up 3 step(s)" in printed and "training at 64 px" in printed


def test_steps_per_image_count_training_images_only(make_config, tmp_path):
    # 2 instance + 6 class images at 3 steps per image: 6 steps (class images are not what is being learnt)
    _images(tmp_path / "img", 2, (64, 64))
    _images(tmp_path / "class", 6, (64, 64), color=(20, 90, 200))
    cfg = make_config("sd15", **{
        "training.max_train_steps": None, "training.max_train_steps_per_image": 3,
        "dataset.instance_dir": str(tmp_path / "img"), "dataset.instance_prompt": "a photo of sks robot",
        "dataset.with_prior_preservation": True, "dataset.class_data_dir": str(tmp_path / "class"),
        "dataset.class_prompt": "a photo of a robot", "dataset.num_class_images": 6})
    plan = plan_run(cfg)
    assert (plan.num_train_images, plan.num_reg_images, plan.max_steps) == (2, 6, 6)
    assert "max_train_steps_per_image 3 × 2 training images" in plan.steps_from


def test_plan_notes_class_images_still_to_generate(make_config, tmp_path):
    _images(tmp_path / "img", 2, (64, 64))
    cfg = make_config("sd15", **{
        "dataset.instance_dir": str(tmp_path / "img"), "dataset.instance_prompt": "a photo of sks robot",
        "dataset.with_prior_preservation": True, "dataset.class_data_dir": str(tmp_path / "class"),
        "dataset.class_prompt": "a photo of a robot", "dataset.num_class_images": 4})
    plan = plan_run(cfg)  # training generates the 4 class images first: the dry run must not refuse
    assert plan.num_train_images == 2 and any("4 of 4 class images" in n for n in plan.notes)


def test_a_text_encoder_rate_without_a_trained_text_encoder_is_named(make_config, tmp_path):
    """kohya trains the text encoder when text_encoder_lr is given; loraforge does not, and says so (plan and log)."""
    _images(tmp_path / "img", 2, (64, 64))
    common = {"dataset.instance_dir": str(tmp_path / "img"), "dataset.instance_prompt": "a photo of sks robot",
              "optimizer.text_encoder_lr": 5e-5, "training.max_train_steps": 1}
    plan = plan_run(make_config("sd15", **common))
    [note] = [n for n in plan.notes if "text_encoder_lr" in n]
    assert "optimizer.text_encoder_lr = 5e-05 has no effect" in note and "network.train_text_encoder = true" in note
    assert not [n for n in plan_run(make_config("sd15", **common, **{"network.train_text_encoder": True})).notes
                if "text_encoder_lr" in n]
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger("loraforge").addHandler(handler)  # the CLI may have stopped its propagation to the root
    try:
        Trainer(make_config("sd15", **common)).run()
    finally:
        logging.getLogger("loraforge").removeHandler(handler)
    assert sum("text_encoder_lr = 5e-05 has no effect" in r.getMessage() for r in records) == 1


def test_a_single_file_of_the_tiny_model_trains_at_its_64_px(make_config, tiny_dirs, tmp_path):
    """A single file written from the embedded tiny model has the tiny architecture: the plan (and so training and
    the dry run) use 64 px, not the family's 512, and the loaded model says it is tiny."""
    from loraforge.formats.single_file import save_single_file
    from loraforge.models.loading import detect_model_family, load_model

    src = load_model(make_config("sd15").model)
    path = save_single_file(tmp_path / "tiny.safetensors", "sd15", src.unet, src.vae, src.text_encoders)
    cfg = make_config("sd15", **{"model.pretrained_model_name_or_path": str(path)})
    plan = plan_run(cfg)
    assert (plan.resolution, plan.is_tiny) == ((64, 64), True)
    assert "a tiny SD 1.x model" in plan.describe(cfg)
    loaded = load_model(cfg.model)
    assert loaded.is_tiny and loaded.source == str(path)
    given = make_config("sd15", **{"model.pretrained_model_name_or_path": str(path),
                                   "model.config_dir": str(tiny_dirs["sd15"])})
    assert detect_model_family(given.model) == ("sd15", False)  # a config folder given: the file is what it says


def test_steps_and_epochs_both_set_say_which_one_ends_the_run(make_config, tmp_path):
    """kohya lets max_train_epochs override max_train_steps; we stop at whichever comes first and say so."""
    # 8 demo images, batch 4: 2 steps an epoch
    both = plan_run(make_config("sd15", **{"training.batch_size": 4, "training.max_train_steps": 5,
                                           "training.num_train_epochs": 2}))
    assert (both.max_steps, both.steps_from) == (4, "training.num_train_epochs 2")
    note = next(n for n in both.notes if "are both set" in n)
    assert "training.max_train_steps (5 steps)" in note and "(4 steps)" in note and "4 steps" in note
    assert "kohya's max_train_epochs overrides max_train_steps" in note
    alone = plan_run(make_config("sd15", **{"training.batch_size": 4, "training.max_train_steps": 5}))
    assert alone.max_steps == 5 and not [n for n in alone.notes if "are both set" in n]
    equal = plan_run(make_config("sd15", **{"training.batch_size": 4, "training.max_train_steps": 4,
                                            "training.num_train_epochs": 2}))
    assert not [n for n in equal.notes if "are both set" in n]  # they agree: nothing to say


def test_dry_run_shows_a_width_height_resolution(make_config, tmp_path, capsys):
    _images(tmp_path / "img", 2, (64, 64))
    cfg = make_config("sd15", **{"dataset.instance_dir": str(tmp_path / "img"), "dataset.resolution": [64, 96],
                                 "dataset.instance_prompt": "a photo of sks robot"})
    assert _dry_run(cfg, dump_config) == 0
    assert "training at 64 × 96 px (width × height)" in capsys.readouterr().err
    assert plan_run(cfg).resolution == (64, 96)


def test_the_plan_shows_the_pivotal_tuning_phases(make_config, tmp_path):
    _images(tmp_path / "img", 2, (64, 64))
    common = {"dataset.instance_dir": str(tmp_path / "img"), "dataset.instance_prompt": "a photo of TOK robot",
              "training.train_text_encoder_ti": True, "training.max_train_steps": 10}
    cfg = make_config("sd15", **common, **{"training.ti_steps": 4, "network.train_text_encoder": True,
                                           "training.token_names": ["<krk>", "<s1>"], "optimizer.embedding_lr": 5e-3})
    text = plan_run(cfg).describe(cfg)
    assert ("phases: steps 1-4: new token embeddings alone (TOK → <krk><s1>, lr 0.005); steps 5-10: UNet + text "
            "encoder(s) lora alone (lr 0.001, text encoders 0.001), embeddings frozen") in text, text
    cfg = make_config("sd15", **common, **{"network.algo": "none"})
    assert "textual inversion alone: new tokens TOK → <s0><s1> train all 10 steps" in plan_run(cfg).describe(cfg)
    cfg = make_config("sd15", **common)
    assert "steps 1-5: embeddings (lr 0.001) and UNet lora together, steps 6-10" in plan_run(cfg).describe(cfg)
    # the steps may come from the epochs: ti_steps is checked against the run's length there
    cfg = make_config("sd15", **{**common, "training.max_train_steps": None, "training.num_train_epochs": 1,
                                 "training.ti_steps": 2})
    with pytest.raises(ConfigError, match=r"training.ti_steps = 2 leaves no step of the run's 2 \(training.num_"):
        plan_run(cfg)
