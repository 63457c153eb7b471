"""kohya's dataset TOML and `N_name` folders; native `[[dataset.subsets]]`; prior-preservation class images."""

import logging
from pathlib import Path

import pytest
from PIL import Image

from loraforge.config import ConfigError, load_config
from loraforge.data.build import build_train_data
from loraforge.data.dataset import balanced_repeats
from loraforge.errors import DataError
from loraforge.data.build import collect_all
from loraforge.formats.metadata import training_metadata


def images(folder, n, size=(64, 64), captions=None):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", size, (i * 30 % 255, 80, 160)).save(folder / f"{i}.png")
        if captions is not None:
            (folder / f"{i}{captions[0]}").write_text(captions[1])
    return folder


def cfg(*sets):
    return load_config(None, ["dataset.min_image_size=16", *sets])


TOML = """
[general]
shuffle_caption = true
caption_extension = ".caption"
keep_tokens = 1

[[datasets]]
resolution = [96, 64]
batch_size = 3
enable_bucket = true
bucket_reso_steps = 32
keep_tokens = 2

  [[datasets.subsets]]
  image_dir = "{train}"
  class_tokens = "sks dog"
  num_repeats = 10
  flip_aug = true

  [[datasets.subsets]]
  image_dir = "{reg}"
  class_tokens = "dog"
  is_reg = true
  keep_tokens = 3
  random_crop = true
"""


def test_kohya_toml_precedence_is_reg_and_class_tokens(tmp_path):
    train = images(tmp_path / "train", 2)
    (train / "0.caption").write_text("own caption, a, b")
    reg = images(tmp_path / "reg", 3)
    path = tmp_path / "ds.toml"
    path.write_text(TOML.replace("{train}", str(train)).replace("{reg}", str(reg)))
    c = cfg(f"dataset.config_file={str(path)!r}", "dataset.caption_prefix='pre'", "training.batch_size=1")
    plan = collect_all(c, 64)
    s_train, s_reg = plan.subsets
    assert s_train.captions.keep_tokens == 2 and s_reg.captions.keep_tokens == 3  # subset > dataset > general
    assert s_train.captions.shuffle and s_train.captions.prefix == "pre"  # general, then [dataset]
    assert s_train.caption_extension == ".caption" and s_train.num_repeats == 10 and s_train.random_flip
    assert not s_train.is_reg and s_reg.is_reg and s_reg.random_crop and not s_train.random_crop
    got = {(it.path.parent.name, it.path.name): (it.caption, it.caption_source) for it in plan.items}
    assert got[("train", "0.png")] == ("own caption, a, b", "sidecar")
    assert got[("train", "1.png")] == ("sks dog", "class_tokens")
    assert got[("reg", "2.png")] == ("dog", "class_tokens")
    group = plan.groups[0]
    assert group.batch_size == 3 and group.buckets.resolution == (96, 64) and group.buckets.enable
    assert group.buckets.steps == 32
    info = plan.run_info()
    assert info["num_train_images"] == 2 and info["num_reg_images"] == 3
    assert info["dataset_dirs"][str(train)] == {"n_repeats": 10, "img_count": 2}


def test_kohya_toml_unknown_and_unsupported_keys(tmp_path):
    folder = images(tmp_path / "a", 1)
    path = tmp_path / "ds.toml"
    path.write_text(f"""[general]
shufle_caption = true
color_aug = false
[[datasets]]
  [[datasets.subsets]]
  image_dir = "{folder}"
  num_repeat = 2
  token_warmup_step = 5
""")
    with pytest.raises(DataError) as e:
        collect_all(cfg(f"dataset.config_file={str(path)!r}"), 64)
    text = "\n".join(e.value.problems)
    assert "unknown key 'shufle_caption' in [general]; did you mean 'shuffle_caption'?" in text
    assert "unknown key 'num_repeat' in [[datasets.subsets]] #1 of [[datasets]] #1; did you mean 'num_repeats'?" in text
    assert "token_warmup_step = 5 is an sd-scripts option loraforge does not implement" in text
    assert "color_aug" not in text  # its no-op default is accepted


def test_kohya_toml_bad_values_and_missing_image_dir(tmp_path):
    path = tmp_path / "ds.toml"
    path.write_text("[[datasets]]\nresolution = 'big'\n  [[datasets.subsets]]\n  keep_tokens = -1\n")
    with pytest.raises(DataError) as e:
        collect_all(cfg(f"dataset.config_file={str(path)!r}"), 64)
    text = "\n".join(e.value.problems)
    assert "resolution = 'big'" in text and "keep_tokens = -1" in text and "image_dir: Field required" in text


def test_kohya_toml_resolution_is_checked_like_dataset_resolution(tmp_path):
    folder = images(tmp_path / "a", 1, captions=(".txt", "a robot"))
    path = tmp_path / "ds.toml"
    path.write_text(f"[[datasets]]\nresolution = '96,100'\n  [[datasets.subsets]]\n  image_dir = {str(folder)!r}\n")
    with pytest.raises(DataError) as e:
        collect_all(cfg(f"dataset.config_file={str(path)!r}"), (64, 64))
    assert e.value.problems == [f"{path}: [[datasets]] #1: resolution = '96,100': 100 is not a multiple of 8; the VAE "
                                "needs one (try 96)"]
    path.write_text(f"[[datasets]]\nresolution = '96,64'\n  [[datasets.subsets]]\n  image_dir = {str(folder)!r}\n")
    assert collect_all(cfg(f"dataset.config_file={str(path)!r}"), (64, 64)).groups[0].buckets.resolution == (96, 64)


def test_config_file_stands_alone():
    with pytest.raises(ConfigError, match="config_file describes every image folder; remove dataset.instance_dir"):
        load_config(None, ["dataset.config_file='x.toml'", "dataset.instance_dir='y'"])


def test_repeat_folders(tmp_path, caplog):
    root = tmp_path / "img"
    images(root / "10_sks dog", 2)
    images(root / "3_style_x", 1, captions=(".txt", "own"))
    images(root / "misc", 1)
    reg = tmp_path / "reg"
    images(reg / "1_dog", 5)
    c = cfg(f"dataset.train_data_dir={str(root)!r}", f"dataset.reg_data_dir={str(reg)!r}", "dataset.shuffle_caption=true")
    with caplog.at_level(logging.WARNING):
        plan = collect_all(c, 64)
    assert "misc is not named N_name" in caplog.text
    by_name = {s.image_dir.name: s for s in plan.subsets}
    assert set(by_name) == {"10_sks dog", "3_style_x", "1_dog"}
    assert by_name["10_sks dog"].num_repeats == 10 and by_name["10_sks dog"].class_tokens == "sks dog"
    assert by_name["3_style_x"].class_tokens == "style_x" and by_name["1_dog"].is_reg
    assert by_name["10_sks dog"].captions.shuffle  # [dataset] caption options apply to the folders
    captions = sorted(it.caption for it in plan.items)
    assert captions == ["dog"] * 5 + ["own", "sks dog", "sks dog"]


def test_regularisation_images_are_balanced_like_sd_scripts(tmp_path):
    root, reg = tmp_path / "img", tmp_path / "reg"
    images(root / "2_sks", 3)  # 6 training samples per epoch
    images(reg / "1_dog", 4)
    plan = collect_all(cfg(f"dataset.train_data_dir={str(root)!r}", f"dataset.reg_data_dir={str(reg)!r}"), 64)
    counts = balanced_repeats(plan.items, plan.subsets)
    reg_counts = [n for n, it in zip(counts, plan.items) if plan.subsets[it.subset].is_reg]
    assert sum(reg_counts) == 6 and reg_counts == [2, 2, 1, 1]
    images(reg / "1_dog", 10)  # more reg images than training samples: the extra ones are unused
    plan = collect_all(cfg(f"dataset.train_data_dir={str(root)!r}", f"dataset.reg_data_dir={str(reg)!r}"), 64)
    counts = balanced_repeats(plan.items, plan.subsets)
    assert sum(counts) == 12 and counts.count(0) == 4


def test_native_subsets_override_the_section(tmp_path):
    a, b = images(tmp_path / "a", 1), images(tmp_path / "b", 1)
    c = cfg("dataset.instance_prompt='sks'", "dataset.shuffle_caption=true", "dataset.repeats=2",
            f"dataset.subsets=[{{image_dir={str(a)!r}}}, {{image_dir={str(b)!r}, num_repeats=5, "
            "shuffle_caption=false, class_tokens='other', caption_prefix='p'}]")
    plan = collect_all(c, 64)
    sa, sb = plan.subsets
    assert sa.num_repeats == 2 and sa.captions.shuffle and sa.class_tokens == "sks"
    assert sb.num_repeats == 5 and not sb.captions.shuffle and sb.captions.prefix == "p"
    assert [it.caption for it in plan.items] == ["sks", "other"]


def test_prior_preservation_class_images_get_the_prior_loss_weight(tmp_path):
    inst = images(tmp_path / "inst", 2)
    cls = images(tmp_path / "class", 5)
    c = cfg(f"dataset.instance_dir={str(inst)!r}", "dataset.instance_prompt='a photo of sks dog'",
            "dataset.with_prior_preservation=true", f"dataset.class_data_dir={str(cls)!r}",
            "dataset.class_prompt='a photo of a dog'", "dataset.num_class_images=3", "dataset.prior_loss_weight=0.25",
            "dataset.caption_prefix='pre'", "training.batch_size=4")
    data = build_train_data(c, 64)
    assert data.run_info["num_reg_images"] == 3 and data.run_info["num_train_images"] == 2  # num_class_images caps
    assert len(data.dataset) == 4  # 2 instance + 2 class samples (balanced)
    batch = next(iter(data.dataloader))
    for caption, w, reg in zip(batch["captions"], batch["loss_weights"].tolist(), batch["is_reg"].tolist()):
        assert (w, caption) == ((0.25, "a photo of a dog") if reg else (1.0, "pre a photo of sks dog"))
    assert batch["is_reg"].sum() == 2


def test_prior_preservation_config_checks(tmp_path):
    with pytest.raises(ConfigError, match="with_prior_preservation needs dataset.class_data_dir and dataset.class_prompt"):
        load_config(None, ["dataset.with_prior_preservation=true"])
    with pytest.raises(ConfigError, match="only used with dataset.with_prior_preservation"):
        load_config(None, ["dataset.class_prompt='a dog'"])
    c = cfg("dataset.with_prior_preservation=true", f"dataset.class_data_dir={str(tmp_path / 'none')!r}",
            "dataset.class_prompt='a dog'")
    with pytest.raises(DataError, match="holds no class images; they are generated"):
        collect_all(c, 64)


def test_zero_repeats_point_to_regularisation_subsets(tmp_path, caplog):
    folder = images(tmp_path / "a", 1)
    with pytest.raises(ConfigError) as e:
        cfg(f"dataset.subsets=[{{image_dir={str(folder)!r}, num_repeats=0}}]")
    assert "num_repeats = 0: a subset with 0 repeats would never be trained on" in str(e.value)
    assert "set is_reg = true" in str(e.value) and "dataset.subsets" in str(e.value)
    path = tmp_path / "ds.toml"
    path.write_text(f"[[datasets]]\n  [[datasets.subsets]]\n  image_dir = '{folder}'\n  num_repeats = 0\n")
    with pytest.raises(DataError) as e:
        collect_all(cfg(f"dataset.config_file={str(path)!r}"), 64)
    assert any("num_repeats = 0" in p and "set is_reg = true" in p for p in e.value.problems)
    images(tmp_path / "train" / "0_dog", 1)
    images(tmp_path / "train" / "2_sks dog", 1)
    with caplog.at_level(logging.WARNING):
        plan = collect_all(cfg(f"dataset.train_data_dir={str(tmp_path / 'train')!r}"), 64)
    assert [Path(s.name).name for s in plan.subsets] == ["2_sks dog"]
    assert "0_dog has 0 repeats and is skipped; class (regularisation) images go in an N_name folder of " \
           "dataset.reg_data_dir" in caplog.text


def test_kohya_toml_color_aug_per_subset(tmp_path):
    a, b = images(tmp_path / "a", 1), images(tmp_path / "b", 1)
    path = tmp_path / "ds.toml"
    path.write_text(f"[general]\ncolor_aug = true\n[[datasets]]\n  [[datasets.subsets]]\n  image_dir = '{a}'\n"
                    f"  [[datasets.subsets]]\n  image_dir = '{b}'\n  color_aug = false\n")
    plan = collect_all(cfg(f"dataset.config_file={str(path)!r}", "dataset.instance_prompt='x'"), 64)
    assert [s.color_aug for s in plan.subsets] == [True, False]


def test_chunked_prompts_and_color_aug_reach_kohyas_metadata(tmp_path):
    folder = images(tmp_path / "a", 1)
    sets = [f"dataset.instance_dir={str(folder)!r}", "dataset.instance_prompt='x'"]
    data = build_train_data(cfg(*sets, "dataset.max_token_length=225", "dataset.color_aug=true"), 64)
    meta = training_metadata(data.cfg, data.run_info, "sd15", "lora")
    assert meta["ss_max_token_length"] == "225" and meta["ss_color_aug"] == "True"
    plain = build_train_data(cfg(*sets), 64)
    assert not {"ss_max_token_length", "ss_color_aug"} & set(training_metadata(plain.cfg, plain.run_info, "sd15", "lora"))
