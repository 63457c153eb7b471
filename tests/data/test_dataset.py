import numpy as np
import torch
from PIL import Image

from loraforge.data.dataset import EpochShuffleSampler, ImageCaptionDataset, collate
from loraforge.data.images import resize_and_crop
from loraforge.data.sources import ImageItem


def gradient_image(path, w, h):
    x = np.linspace(0, 255, w, dtype=np.uint8)
    arr = np.stack([np.tile(x, (h, 1))] * 3, axis=-1)
    Image.fromarray(arr).save(path)
    return path


def test_resize_covers_then_crops_and_reports_offsets():
    img = Image.new("RGB", (200, 100))
    out, (top, left) = resize_and_crop(img, (64, 64), center=True, rng=np.random.default_rng(0))
    assert out.size == (64, 64) and top == 0 and left == (128 - 64) // 2
    out, (top, left) = resize_and_crop(img, (64, 64), center=False, rng=np.random.default_rng(1))
    assert out.size == (64, 64) and top == 0 and 0 <= left <= 64


def test_examples_are_deterministic_per_seed_epoch_index_and_flip_changes_pixels(tmp_path):
    p = gradient_image(tmp_path / "g.png", 160, 120)
    items = [ImageItem(p, "cap", "instance_prompt")]
    ds = ImageCaptionDataset(items, 64, center_crop=False, random_flip=True, repeats=8, seed=3)
    a = [ds[i].pixel_values for i in range(8)]
    b = [ds[i].pixel_values for i in range(8)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert len({x[0, 0, 0].item() for x in a}) > 1, "random crop/flip never varied"
    ex = ds[0]
    assert ex.original_size == (120, 160) and ex.pixel_values.shape == (3, 64, 64)
    assert -1.0 <= ex.pixel_values.min() and ex.pixel_values.max() <= 1.0
    ds.set_epoch(1)
    assert not all(torch.equal(x, ds[i].pixel_values) for i, x in enumerate(a))


def test_repeats_and_collate():
    items = [ImageItem(None, f"c{i}", "x") for i in range(3)]
    ds = ImageCaptionDataset(items, 64, repeats=4)
    assert len(ds) == 12


def test_sampler_is_a_fresh_permutation_per_epoch_and_reproducible():
    s = EpochShuffleSampler(10, seed=7)
    e0 = list(s)
    assert sorted(e0) == list(range(10)) and list(s) == e0
    s.set_epoch(1)
    assert list(s) != e0


def test_collate_shapes(tmp_path):
    p = gradient_image(tmp_path / "g.png", 80, 80)
    ds = ImageCaptionDataset([ImageItem(p, "cap", "x")], 64, repeats=2)
    batch = collate([ds[0], ds[1]])
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    assert batch["captions"] == ["cap", "cap"] and batch["original_sizes"] == [(80, 80), (80, 80)]
