"""Aspect buckets: the predefined sizes, bucket choice, no-upscale sizes, one bucket per batch, SDXL sizes."""

import pytest
from PIL import Image

from loraforge.config import ConfigError, load_config
from loraforge.data.buckets import BucketBatchSampler, BucketManager, BucketSettings, make_bucket_resolutions
from loraforge.data.build import build_train_data
from loraforge.data.dataset import collate
from loraforge.errors import DataError


def test_predefined_buckets_follow_sd_scripts():
    resos = make_bucket_resolutions((512, 512), 256, 1024, 64)
    assert (512, 512) in resos and (256, 1024) in resos and (1024, 256) in resos and (768, 320) in resos
    assert all(w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 for w, h in resos)
    assert all(256 <= min(w, h) and max(w, h) <= 1024 for w, h in resos)
    # min/max/steps change the set
    assert max(max(r) for r in make_bucket_resolutions((512, 512), 256, 768, 64)) == 768
    assert min(min(r) for r in make_bucket_resolutions((512, 512), 384, 1024, 64)) == 384
    assert all(w % 32 == 0 for w, _ in make_bucket_resolutions((512, 512), 256, 1024, 32))
    assert len(make_bucket_resolutions((512, 512), 256, 1024, 32)) > len(resos)


def test_bucket_choice_by_aspect_ratio():
    m = BucketManager(BucketSettings((512, 512), True, 256, 1024, 64))
    assert m.select(1000, 1000) == (512, 512)
    assert m.select(1600, 900) == (640, 384)  # 16:9 → closest ratio on the grid
    w, h = m.select(900, 1600)
    assert h > w
    assert m.select(640, 384) == (640, 384)  # an image of a bucket's exact size keeps it
    off = BucketManager(BucketSettings((512, 512), False))
    assert off.select(1600, 900) == (512, 512)


def test_no_upscale_sizes():
    m = BucketManager(BucketSettings((512, 512), True, 256, 1024, 64, no_upscale=True))
    assert m.select(300, 200) == (256, 192)  # smaller than the area: own size floored to the grid, never upscaled
    w, h = m.select(2000, 1000)  # larger: shrunk to about 512² with the ratio kept
    assert w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 and 1.7 < w / h < 2.3
    assert m.select(100, 90) == (64, 64)
    # min/max are ignored: a long thin image may be longer than max_bucket_reso
    assert BucketManager(BucketSettings((512, 512), True, 256, 512, 64, True)).select(1200, 200)[0] == 1152


def test_batch_sampler_keeps_one_bucket_per_batch_and_is_a_function_of_seed_and_epoch():
    keys = [(0, (64, 64))] * 5 + [(0, (96, 32))] * 4 + [(1, (64, 64))] * 3
    s = BucketBatchSampler(keys, {0: 2, 1: 3}, seed=1)
    batches = s.batches(0)
    assert len(s) == len(batches) == 3 + 2 + 1
    assert sorted(i for b in batches for i in b) == list(range(12))
    for b in batches:
        assert len({keys[i] for i in b}) == 1
        assert len(b) <= (3 if keys[b[0]][0] == 1 else 2)
    assert BucketBatchSampler(keys, {0: 2, 1: 3}, seed=1).batches(0) == batches
    assert s.batches(1) != batches and BucketBatchSampler(keys, {0: 2, 1: 3}, seed=2).batches(0) != batches
    s.set_epoch(4)
    assert list(s) == [[(4, i) for i in b] for b in s.batches(4)]


def _images(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    for n, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (n * 40 % 255, 90, 120)).save(folder / f"{n}.png")
    return folder


def _cfg(folder, **kv):
    sets = [f"dataset.instance_dir={str(folder)!r}", "dataset.instance_prompt='x'", "dataset.min_image_size=16"]
    sets += [f"{k}={v}" for k, v in kv.items()]
    return load_config(None, sets)


def test_batches_hold_one_bucket_and_carry_sizes(tmp_path):
    folder = _images(tmp_path / "img", [(120, 40), (130, 44), (60, 180), (64, 64), (70, 66), (200, 66)])
    cfg = _cfg(folder, **{"dataset.enable_bucket": "true", "dataset.bucket_reso_steps": 32,
                          "training.batch_size": 2})
    data = build_train_data(cfg, 64)
    assert sorted(set(data.dataset.item_buckets)) == [(32, 96), (64, 64), (96, 32)]
    assert data.dataset.item_buckets[0] == (96, 32) and data.dataset.item_buckets[2] == (32, 96)
    seen = 0
    for batch in data.dataloader:
        h, w = batch["target_size"]
        assert batch["pixel_values"].shape[2:] == (h, w)
        seen += len(batch["captions"])
        for (oh, ow), (top, left) in zip(batch["original_sizes"], batch["crops_top_left"]):
            assert (oh, ow) in {(40, 120), (44, 130), (180, 60), (64, 64), (66, 70), (66, 200)}
            assert top >= 0 and left >= 0
    assert seen == 6 and len(data.dataloader) == 2 + 1 + 1  # 3 wide images at batch 2, 2 square, 1 tall
    assert data.run_info["bucket_info"] == {"32x96": 1, "64x64": 2, "96x32": 3}


def test_crop_offsets_are_in_the_resized_image(tmp_path):
    folder = _images(tmp_path / "img", [(200, 66)])
    data = build_train_data(_cfg(folder, **{"dataset.enable_bucket": "true", "dataset.bucket_reso_steps": 32}), 64)
    ex = data.dataset[0]
    assert ex.original_size == (66, 200) and ex.target_size == (32, 96)
    # 200×66 covers 96×32 at scale 0.485 → 97×32: one column too many, center crop at left 0
    assert ex.crop_top_left == (0, 0)
    batch = collate([ex])
    assert batch["target_size"] == (32, 96) and batch["original_sizes"] == [(66, 200)]


def test_bucket_settings_are_validated():
    with pytest.raises(ConfigError, match="min_bucket_reso = 96 is larger than the resolution 64"):
        load_config(None, ["dataset.enable_bucket=true", "dataset.resolution=64", "dataset.min_bucket_reso=96",
                           "dataset.bucket_reso_steps=32"])
    with pytest.raises(ConfigError, match="not a multiple of 8"):
        load_config(None, ["dataset.bucket_reso_steps=12"])


def test_no_upscale_bucket_too_small_is_an_error(tmp_path):
    folder = _images(tmp_path / "img", [(40, 20), (64, 64)])
    cfg = _cfg(folder, **{"dataset.enable_bucket": "true", "dataset.bucket_no_upscale": "true",
                          "dataset.bucket_reso_steps": 32})
    with pytest.raises(DataError, match="empty bucket") as e:
        build_train_data(cfg, 64)
    assert e.value.problems == [str(folder / "0.png")]


def test_non_square_resolution_fixed_size_bucket_limits_and_small_images(tmp_path):
    folder = _images(tmp_path / "img", [(200, 66), (70, 160), (64, 64)])
    # without buckets: every image is resized to cover width × height and cropped to it
    data = build_train_data(_cfg(folder, **{"dataset.resolution": "[64, 96]"}), (64, 96))
    for i in range(3):
        ex = data.dataset[i]
        assert ex.target_size == (96, 64) and tuple(ex.pixel_values.shape) == (3, 96, 64)
    # buckets: the area is width × height; unset limits are half the shorter side and twice the longer one
    cfg = _cfg(folder, **{"dataset.resolution": "[64, 192]", "dataset.enable_bucket": "true",
                          "dataset.bucket_reso_steps": 32})
    buckets = build_train_data(cfg, (64, 192)).dataset.groups[0].buckets
    assert (buckets.min_reso, buckets.max_reso) == (32, 384)
    manager = BucketManager(buckets)
    assert max(w * h for w, h in manager.predefined) <= 64 * 192 and (32, 384) in manager.predefined
    # too small: below half the resolution's shorter side (32 px here), not its longer one
    tiny = _images(tmp_path / "small", [(40, 40), (24, 100)])
    sets = [f"dataset.instance_dir={str(tiny)!r}", "dataset.instance_prompt='x'", "dataset.resolution=[64, 192]"]
    with pytest.raises(DataError) as err:
        build_train_data(load_config(None, sets), (64, 192))
    assert len(err.value.problems) == 1 and "1.png" in err.value.problems[0] and "at least 32 px" in err.value.problems[0]
