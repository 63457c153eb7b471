"""`dataset.prior_batches`: "mixed" (kohya, the default) shuffles class images into the batches; "paired" (diffusers)
puts batch_size training images and as many class images in every batch, max(training, class) pairs an epoch."""

from collections import Counter

import pytest
from PIL import Image

from loraforge.config import ConfigError
from loraforge.data.buckets import BucketBatchSampler, PairedBatchSampler
from loraforge.data.build import build_train_data
from loraforge.data.dataset import paired_index
from loraforge.data.sources import ImageItem
from loraforge.data.subsets import Subset
from loraforge.errors import DataError


def _images(folder, sizes, color):
    folder.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(sizes):
        Image.new("RGB", size, (color, 20 * i, 90)).save(folder / f"{i}.png")
    return str(folder)


def _cfg(make_config, tmp_path, n_inst=2, n_class=5, class_size=(64, 64), **kw):
    inst = _images(tmp_path / "inst", [(64, 64)] * n_inst, 200)
    cls = _images(tmp_path / "cls", [class_size] * n_class, 20)
    return make_config("sd15", **{
        "dataset.instance_dir": inst, "dataset.instance_prompt": "a photo of sks robot", "dataset.min_image_size": 16,
        "dataset.with_prior_preservation": True, "dataset.class_data_dir": cls,
        "dataset.class_prompt": "a photo of a robot", "dataset.num_class_images": n_class, "training.batch_size": 2,
        **kw})


def _epoch(data, epoch):
    """Every batch of an epoch as (captions, is_reg) lists, as the training loop sees them."""
    data.sampler.set_epoch(epoch)
    data.dataset.set_epoch(epoch)
    return [(b["captions"], b["is_reg"].tolist(), b["loss_weights"].tolist()) for b in data.dataloader]


def test_paired_batches_hold_training_then_as_many_class_images(make_config, tmp_path):
    data = build_train_data(_cfg(make_config, tmp_path, **{"dataset.prior_batches": "paired",
                                                           "dataset.prior_loss_weight": 0.5}), 64)
    assert isinstance(data.sampler, PairedBatchSampler)
    # diffusers' epoch: max(2 training, 5 class) = 5 pairs, the training images cycled; batches of 2 pairs
    assert len(data.dataset) == 10 and len(data.sampler) == 3
    batches = _epoch(data, 0)
    assert sorted(len(c) for c, _, _ in batches) == [2, 4, 4]  # the last batch holds one pair
    for captions, is_reg, weights in batches:
        n = len(captions) // 2
        assert is_reg == [False] * n + [True] * n
        assert weights == [1.0] * n + [0.5] * n
        assert captions == ["a photo of sks robot"] * n + ["a photo of a robot"] * n
    # every class image is used each epoch (kohya's balance would use 2 of the 5), each training image 2-3 times
    drawn = Counter(data.dataset.items[data.dataset.index[2 * k + 1]].path.name for k in range(5))
    assert sorted(drawn) == [f"{i}.png" for i in range(5)]
    inst = Counter(data.dataset.items[i].path.name for i in data.dataset.index[0::2])
    assert sorted(inst.values()) == [2, 3]
    assert "paired with the training samples (5 pairs)" in data.describe()


def test_mixed_is_the_default_and_balances_class_images_as_kohya(make_config, tmp_path):
    cfg = _cfg(make_config, tmp_path)
    assert cfg.dataset.prior_batches == "mixed"
    data = build_train_data(cfg, 64)
    assert type(data.sampler) is BucketBatchSampler
    # as many class samples as training samples (2 + 2), shuffled into batches of 2 regardless of kind
    assert len(data.dataset) == 4 and len(data.sampler) == 2
    kinds = [is_reg for epoch in range(4) for _, is_reg, _ in _epoch(data, epoch)]
    assert all(len(k) == 2 for k in kinds)
    assert sum(map(sum, kinds)) == 8  # 2 class samples an epoch
    assert any(k != [False, True] for k in kinds)  # not paired: some batch is not training-then-class
    assert "paired" not in data.describe()


def test_paired_needs_a_class_image_in_every_bucket(make_config, tmp_path):
    cfg = _cfg(make_config, tmp_path, class_size=(64, 128), **{
        "dataset.prior_batches": "paired", "dataset.enable_bucket": True, "dataset.bucket_reso_steps": 32,
        "dataset.min_bucket_reso": 32, "dataset.max_bucket_reso": 128})
    with pytest.raises(DataError, match="some buckets have training images and no class images") as e:
        build_train_data(cfg, 64)
    assert e.value.problems == ["bucket 64x64: 2 training samples"]


def test_paired_needs_class_or_regularisation_images(make_config, tmp_path):
    inst = _images(tmp_path / "inst", [(64, 64)], 200)
    with pytest.raises(ConfigError, match='prior_batches = "paired" puts class images in every batch, but there '
                                          "are none: set dataset.with_prior_preservation = true"):
        make_config("sd15", **{"dataset.instance_dir": inst, "dataset.instance_prompt": "x",
                               "dataset.prior_batches": "paired"})
    with pytest.raises(ConfigError, match="prior_batches"):
        make_config("sd15", **{"dataset.prior_batches": "kohya"})
    # kohya regularisation folders count as class images
    reg = tmp_path / "reg"
    _images(reg / "1_robot", [(64, 64)] * 3, 20)
    train = tmp_path / "train"
    _images(train / "2_sks robot", [(64, 64)], 200)
    cfg = make_config("sd15", **{"dataset.train_data_dir": str(train), "dataset.reg_data_dir": str(reg),
                                 "dataset.prior_batches": "paired", "dataset.min_image_size": 16})
    data = build_train_data(cfg, 64)
    assert len(data.dataset) == 6  # max(1 image × 2 repeats, 3 reg images) = 3 pairs
    assert all(is_reg == [False, True] for _, is_reg, _ in _epoch(data, 0) if len(is_reg) == 2)
    # a kohya dataset config file is read at build time: one without regularisation subsets is refused there
    items = [ImageItem(tmp_path / "a.png", "x", "sidecar")]
    with pytest.raises(DataError, match="but the dataset has none"):
        paired_index(items, [Subset("img", tmp_path)], [(0, (64, 64))])
