"""kohya's `face_crop_aug_range`: the face box from the file name, the scaled crop around it, and where it is
refused (buckets, cached latents)."""

import numpy as np
import pytest
from PIL import Image

from loraforge.config import ConfigError, load_config
from loraforge.data.build import build_train_data, collect_all
from loraforge.data.images import face_box, face_crop
from loraforge.errors import DataError
from loraforge.formats.metadata import training_metadata


def face_image(size, box) -> Image.Image:
    """Blue, with the face box (cx, cy, w, h) painted red."""
    img = Image.new("RGB", size, (0, 0, 255))
    cx, cy, w, h = box
    img.paste((255, 0, 0), (cx - w // 2, cy - h // 2, cx - w // 2 + w, cy - h // 2 + h))
    return img


def red_box(arr: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the red pixels of an RGB uint8 array."""
    ys, xs = np.nonzero((arr[..., 0] > 127) & (arr[..., 2] < 128))
    return ys.min(), xs.min(), ys.max() - ys.min() + 1, xs.max() - xs.min() + 1


def test_face_box_is_read_from_the_file_name():
    assert face_box("data/face_40_30_20_24.png") == (40, 30, 20, 24)
    assert face_box("a_b_c_1_2_3_4.jpg") == (1, 2, 3, 4)
    assert face_box("photo.png") is None
    assert face_box("40_30_20_20.png") is None  # kohya wants a name before the four numbers
    assert face_box("face_40_x_20_20.png") is None
    assert face_box("face_40_30_0_20.png") is None


@pytest.mark.parametrize("anywhere", [True, False])
def test_the_face_is_scaled_into_the_range_and_stays_inside_the_crop(anywhere):
    box = (100, 120, 120, 120)  # 400 × 400 px, the face off centre: scale 0.18-0.27, so that 64 px is 2-3 faces
    img = face_image((400, 400), box)
    sides, offsets = set(), set()
    for seed in range(40):
        out, (top, left) = face_crop(img, box, (64, 64), (2.0, 3.0), np.random.default_rng(seed), anywhere)
        assert out.size == (64, 64)
        y, x, h, w = red_box(np.asarray(out))
        assert abs(h - w) <= 1  # a square face cut by the crop would not be square
        assert 2.0 - 0.05 <= 64 / max(h, w) <= 3.0 + 0.1  # 21.3-32 px, ±1 px of resampling
        sides.add(max(h, w))
        offsets.add((y, x))
    assert min(sides) <= 23 and max(sides) >= 30  # the scale is drawn per sample, over the whole range
    assert (len(offsets) > len(sides)) if anywhere else True


def test_without_random_crop_the_crop_is_centred_on_the_face():
    box = (220, 180, 40, 40)
    img = face_image((400, 400), box)
    out, (top, left) = face_crop(img, box, (64, 64), (2.0, 2.0), np.random.default_rng(0), False)
    assert (top, left) == (round(180 * 0.8) - 32, round(220 * 0.8) - 32)  # scale 64 / (2 × 40)
    y, x, h, w = red_box(np.asarray(out))
    assert abs(y - 16) <= 1 and abs(x - 16) <= 1 and abs(h - 32) <= 1 and abs(w - 32) <= 1


def test_a_face_at_the_corner_stays_inside_and_a_small_image_is_never_left_uncovered():
    box = (10, 10, 16, 16)
    img = face_image((96, 96), box)
    for seed in range(8):
        out, (top, left) = face_crop(img, box, (64, 64), (1.5, 2.5), np.random.default_rng(seed), True)
        y, x, h, w = red_box(np.asarray(out))
        assert (y, x) == (2 - top, 2 - left) and h == w == 16  # never enlarged: 64 / 16 = 4 > 2.5
        assert 0 <= top <= 2 and 0 <= left <= 2
    out, _ = face_crop(face_image((48, 48), (24, 24, 8, 8)), (24, 24, 8, 8), (64, 64), (2.0, 4.0),
                       np.random.default_rng(0), True)
    assert out.size == (64, 64)  # scaled up to cover the training size


def write_images(folder):
    folder.mkdir()
    face_image((96, 96), (40, 30, 20, 20)).save(folder / "face_40_30_20_20.png")
    face_image((96, 96), (40, 30, 20, 20)).save(folder / "plain.png")
    return folder


def data_for(folder, *sets):
    cfg = load_config(None, [f"dataset.instance_dir={str(folder)!r}", "dataset.instance_prompt='sks'",
                             "dataset.min_image_size=16", "training.seed=3", *sets])
    return build_train_data(cfg, 64)


def pixels(data, name, epoch=0) -> np.ndarray:
    index = next(i for i in range(len(data.dataset)) if data.dataset.items[data.dataset.index[i]].path.name == name)
    t = data.dataset[(epoch, index)].pixel_values
    return ((t.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)


def test_the_dataset_crops_around_the_face_named_in_the_file(tmp_path):
    folder = write_images(tmp_path / "img")
    data = data_for(folder, "dataset.face_crop_aug_range='2.0,4.0'")
    plain = data_for(folder)
    y, x, h, w = red_box(pixels(data, "face_40_30_20_20.png"))
    assert 16 - 1 <= max(h, w) <= 20 + 1  # 64 px is 3.2-4 faces (the 96 px image is never enlarged)
    assert abs(h - w) <= 1 and y + h <= 64 and x + w <= 64
    assert max(red_box(pixels(plain, "face_40_30_20_20.png"))[2:]) <= 14  # without it: 20 px × 64 / 96
    # Without a face box in its name, an image is resized and cropped as usual, and the summary says so.
    assert np.array_equal(pixels(data, "plain.png"), pixels(plain, "plain.png"))
    assert any("1 image(s) with face_crop_aug_range have no face box" in n and "plain.png" in n for n in data.notes)
    # Drawn from the run's seed: the same sample is the same crop, another epoch another one.
    assert np.array_equal(pixels(data, "face_40_30_20_20.png"), pixels(data_for(folder, "dataset.face_crop_aug_range="
                                                                           "[2.0, 4.0]"), "face_40_30_20_20.png"))
    assert not np.array_equal(pixels(data, "face_40_30_20_20.png"), pixels(data, "face_40_30_20_20.png", epoch=1))
    meta = training_metadata(data.cfg, data.run_info, "sd15", "lora")
    assert meta["ss_face_crop_aug_range"] == "(2.0, 4.0)"  # as kohya writes its tuple
    assert "ss_face_crop_aug_range" not in training_metadata(plain.cfg, plain.run_info, "sd15", "lora")


def test_config_reads_a_range_and_refuses_a_bad_one(tmp_path):
    assert load_config(None, ["dataset.face_crop_aug_range='2.0,4.0'"]).dataset.face_crop_aug_range == [2.0, 4.0]
    sub = load_config(None, ["dataset.subsets=[{image_dir='x', face_crop_aug_range=[1.5, 2]}]"]).dataset.subsets[0]
    assert sub.face_crop_aug_range == [1.5, 2.0]
    for bad, why in (("[4.0, 2.0]", "0 < lo <= hi"), ("[0, 2]", "0 < lo <= hi"), ("'2.0'", "two numbers")):
        with pytest.raises(ConfigError) as e:
            load_config(None, [f"dataset.face_crop_aug_range={bad}"])
        assert "face_crop_aug_range" in str(e.value) and why in str(e.value)


def test_refused_with_buckets_and_with_cached_latents(tmp_path):
    folder = write_images(tmp_path / "img")
    with pytest.raises(DataError, match="face_crop_aug_range cannot be combined with dataset.enable_bucket.*"
                                        "set enable_bucket = false"):
        data_for(folder, "dataset.face_crop_aug_range=[2.0, 4.0]", "dataset.enable_bucket=true")
    with pytest.raises(DataError, match="cache_latents cannot be combined with dataset.face_crop_aug_range.*"
                                        "turn face_crop_aug_range or dataset.cache_latents off.*color_aug"):
        data_for(folder, "dataset.face_crop_aug_range=[2.0, 4.0]", "dataset.cache_latents=true")


def test_kohya_toml_subset_takes_the_range_and_its_buckets_are_checked(tmp_path):
    folder = write_images(tmp_path / "img")
    path = tmp_path / "ds.toml"
    path.write_text(f"[[datasets]]\n  [[datasets.subsets]]\n  image_dir = '{folder}'\n  class_tokens = 'x'\n"
                    "  face_crop_aug_range = [2.0, 4.0]\n  [[datasets.subsets]]\n  image_dir = 'other'\n"
                    "  face_crop_aug_range = '3.0,2.0'\n")
    sets = [f"dataset.config_file={str(path)!r}", "dataset.min_image_size=16"]
    with pytest.raises(DataError) as e:
        collect_all(load_config(None, sets), 64)
    assert any("#2" in p and "face_crop_aug_range = '3.0,2.0'" in p and "0 < lo <= hi" in p for p in e.value.problems)
    path.write_text(f"[[datasets]]\n  [[datasets.subsets]]\n  image_dir = '{folder}'\n  class_tokens = 'x'\n"
                    "  face_crop_aug_range = [2.0, 4.0]\n")
    data = build_train_data(load_config(None, sets), 64)
    assert [s.face_crop_aug_range for s in data.plan.subsets] == [(2.0, 4.0)]
    assert 15 <= max(red_box(pixels(data, "face_40_30_20_20.png"))[2:]) <= 21
    path.write_text(path.read_text().replace("[[datasets]]\n", "[[datasets]]\nenable_bucket = true\n"))
    with pytest.raises(DataError, match="cannot be combined with dataset.enable_bucket"):
        build_train_data(load_config(None, sets), 64)
