from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from loraforge.data.dataset import ImageCaptionDataset, collate
from loraforge.errors import DataError
from loraforge.data.images import color_aug, resize_and_crop
from loraforge.data.subsets import Subset
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


def test_repeats_and_collate(tmp_path):
    items = []
    for i, (w, h) in enumerate([(80, 80), (96, 64), (64, 72)]):
        Image.new("RGB", (w, h), (40 * i, 255 - 40 * i, 128)).save(tmp_path / f"{i}.png")
        items.append(ImageItem(tmp_path / f"{i}.png", f"c{i}", "x"))
    ds = ImageCaptionDataset(items, 64, repeats=4)
    assert len(ds) == 12 and ds.index == [0] * 4 + [1] * 4 + [2] * 4  # each item 4 times
    examples = [ds[0], ds[4], ds[8], replace(ds[9], is_reg=True, loss_weight=0.25)]  # the last as a class image
    batch = collate(examples)
    assert batch["captions"] == ["c0", "c1", "c2", "c2"]
    assert batch["original_sizes"] == [(80, 80), (64, 96), (72, 64), (72, 64)]
    assert batch["crops_top_left"] == [(0, 0), (0, 16), (4, 0), (4, 0)] and batch["target_size"] == (64, 64)
    assert torch.equal(batch["pixel_values"], torch.stack([e.pixel_values for e in examples]))
    green = [(255 - 40 * i) / 127.5 - 1 for i in (0, 1, 2, 2)]  # each image's own colour, scaled to [-1, 1]
    assert batch["pixel_values"][:, 1].amin(dim=(1, 2)).tolist() == pytest.approx(green, abs=1e-6)
    assert batch["pixel_values"][:, 1].amax(dim=(1, 2)).tolist() == pytest.approx(green, abs=1e-6)
    assert batch["loss_weights"].tolist() == [1.0, 1.0, 1.0, 0.25] and batch["is_reg"].tolist() == [False] * 3 + [True]
    assert batch["latent_seeds"] == [e.latent_seed for e in examples] and len(set(batch["latent_seeds"])) == 4
    assert "latents" not in batch and "prompt_embeds" not in batch  # no caches: nothing to stack
    with pytest.raises(DataError, match="mixes bucket sizes"):
        collate([examples[0], replace(examples[1], target_size=(64, 96))])


def test_collate_shapes(tmp_path):
    p = gradient_image(tmp_path / "g.png", 80, 80)
    ds = ImageCaptionDataset([ImageItem(p, "cap", "x")], 64, repeats=2)
    batch = collate([ds[0], ds[1]])
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    assert batch["captions"] == ["cap", "cap"] and batch["original_sizes"] == [(80, 80), (80, 80)]


def colourful(w=32, h=24):
    rng = np.random.default_rng(5)
    return Image.fromarray(rng.integers(30, 220, (h, w, 3), dtype=np.uint8), "RGB")


def test_color_aug_is_kohyas_hue_shift_or_gamma_on_a_third_of_the_samples():
    img = colourful()
    arr = np.asarray(img)
    hue_in = np.asarray(img.convert("HSV"))
    kinds = []
    for seed in range(300):
        out = np.asarray(color_aug(img, np.random.default_rng(seed)))
        draws = np.random.default_rng(seed)  # the same draws, replayed: kohya's order
        if draws.random() > 0.33:
            assert np.array_equal(out, arr)
            kinds.append("none")
        elif draws.random() > 0.5:
            shift = draws.uniform(-8, 8) % 180 * 256 / 180
            hsv = np.asarray(Image.fromarray(out).convert("HSV")).astype(int)
            moved = (hsv[..., 0] - hue_in[..., 0]) % 256
            assert abs(np.median(moved) - shift) < 2.5 or abs(np.median(moved) - shift) > 253.5
            assert np.abs(hsv[..., 2] - hue_in[..., 2]).max() <= 3  # the brightness stays
            kinds.append("hue")
        else:
            gamma = draws.uniform(0.95, 1.05)
            assert np.array_equal(out, np.clip(arr.astype(np.float64) ** gamma, 0, 255).astype(np.uint8))
            kinds.append("gamma")
    assert 0.25 < 1 - kinds.count("none") / 300 < 0.42 and kinds.count("hue") > 20 and kinds.count("gamma") > 20


def test_color_aug_in_the_dataset_is_per_sample_and_leaves_other_draws_alone(tmp_path):
    colourful(96, 80).save(tmp_path / "c.png")
    items = [ImageItem(tmp_path / "c.png", "cap", "instance_prompt")]

    def dataset(on):
        sub = Subset("s", None, 12, random_flip=True, random_crop=True, color_aug=on)
        return ImageCaptionDataset(items, 64, seed=3, subsets=[sub])

    off, on = dataset(False), dataset(True)
    changed = []
    for i in range(12):
        a, b = off[i].pixel_values, on[i].pixel_values
        assert torch.equal(b, on[i].pixel_values)  # the same sample, the same colours
        recoloured = np.random.default_rng([3, 0, i, 4]).random() <= 0.33  # its own stream, as documented
        assert torch.equal(a, b) != recoloured  # crops and flips are those of the run without color_aug
        changed.append(recoloured)
    assert 0 < sum(changed) < 12
