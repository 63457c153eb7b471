"""Data that used to be silently wrong: 16-bit PNGs, long captions, byte-order marks, GIFs and dangling links,
bad `metadata.jsonl` rows, non-UTF-8 text, duplicate images. Each is handled correctly, refused with a message
naming the file, or reported in the dataset summary. Every file is generated here."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from loraforge.config import load_config
from loraforge.data.build import build_train_data
from loraforge.errors import DataError
from loraforge.data.images import load_rgb
from loraforge.training.plan import plan_run


def img(path, color=(200, 30, 30), size=(64, 64)):
    Image.new("RGB", size, color).save(path)
    return path


def train_data(folder, **extra):
    sets = [f"dataset.instance_dir={str(folder)!r}", "dataset.instance_prompt='a photo'", "dataset.resolution=64"]
    sets += [f"{k}={v!r}" for k, v in extra.items()]
    return build_train_data(load_config(None, sets), 64)


def test_16_bit_png_is_scaled_not_clipped_to_white(tmp_path):
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    got = np.asarray(load_rgb(tmp_path / "g16.png"))
    assert got.shape == (64, 64, 3)
    assert (got == 255).mean() < 0.01  # Pillow's convert("RGB") makes 99.6 % of these pixels 255
    assert np.abs(got[..., 0].astype(float) - ramp / 257).max() <= 0.5
    # mode "I" (32-bit integers holding 16-bit values) is read the same way
    buf = io.BytesIO()
    Image.fromarray(ramp.astype(np.int32), mode="I").save(buf, format="TIFF")
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "I"
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "x.tif", buf.getvalue())), got)


def test_long_captions_are_counted_with_the_longest(tmp_path):
    for name, words in (("a", 239), ("b", 100), ("c", 3)):
        img(tmp_path / f"{name}.png")
        (tmp_path / f"{name}.txt").write_text(" ".join(["photo"] * words))
    data = train_data(tmp_path)
    note = next(n for n in data.notes if "tokens" in n)
    assert note.startswith("2 caption(s) longer than the text encoder's 77 tokens")
    assert "the longest: 241 tokens" in note and "a.png" in note
    assert note in data.describe()
    assert any(note in n for n in plan_run(data.cfg, data=data).notes)  # `train --dry-run` prints the plan's notes


def test_byte_order_marks_are_not_part_of_captions(tmp_path):
    img(tmp_path / "a.png")
    img(tmp_path / "b.png", (10, 20, 30))
    (tmp_path / "a.txt").write_bytes("\ufeffa red cube".encode("utf-8"))
    (tmp_path / "metadata.jsonl").write_bytes(("\ufeff" + json.dumps({"file_name": "b.png", "text": "a blue"})
                                              + "\n").encode("utf-8"))
    got = {it.path.name: it.caption for it in train_data(tmp_path).items}
    assert got == {"a.png": "a red cube", "b.png": "a blue"}


def test_gifs_load_their_first_frame_and_skipped_files_are_reported(tmp_path):
    img(tmp_path / "a.png")
    frames = [Image.new("RGB", (64, 64), c) for c in ((0, 200, 0), (0, 0, 200))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    img(tmp_path / "scan.tiff")
    data = train_data(tmp_path)
    assert sorted(it.path.name for it in data.items) == ["a.png", "anim.gif"]
    pixel = load_rgb(tmp_path / "anim.gif").getpixel((5, 5))
    assert pixel[1] > 150 and pixel[2] < 50  # the first (green) frame
    text = data.describe()
    assert "gone.png: skipped, a link to" in text and "does not exist" in text
    assert "scan.tiff: skipped, .tiff is not a type loraforge reads" in text


@pytest.mark.parametrize("row, expected", [
    ({"file_name": "missing.png", "text": "x"}, ["metadata.jsonl:2", "'missing.png'", "is not an image of"]),
    ({"file_name": "b.png", "captoin": "x"},
     ["metadata.jsonl:2", "no caption column text, caption, prompt", "captoin", "dataset.caption_column"]),
], ids=["missing file", "misspelt column"])
def test_bad_metadata_rows_are_refused_with_the_row(tmp_path, row, expected):
    img(tmp_path / "a.png")
    img(tmp_path / "b.png")
    lines = [json.dumps({"file_name": "a.png", "text": "ok"}), json.dumps(row)]
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        train_data(tmp_path)
    text = str(e.value) + "\n".join(e.value.problems)
    assert all(s in text for s in expected), text


@pytest.mark.parametrize("name", ["a.txt", "metadata.jsonl"])
def test_non_utf8_text_is_a_data_error_naming_the_file(tmp_path, name):
    img(tmp_path / "a.png")
    text = "un café" if name == "a.txt" else json.dumps({"file_name": "a.png", "text": "un café"}, ensure_ascii=False)
    (tmp_path / name).write_bytes(text.encode("latin-1"))
    with pytest.raises(DataError, match=rf"{name}: not UTF-8 text .*re-save it as UTF-8"):
        train_data(tmp_path)


def test_duplicate_images_get_a_summary_line(tmp_path):
    img(tmp_path / "a.png")
    (tmp_path / "copy.png").write_bytes((tmp_path / "a.png").read_bytes())
    img(tmp_path / "other.png", (1, 2, 3))
    data = train_data(tmp_path)
    dupes = [n for n in data.notes if n.startswith("duplicate images")]
    assert len(dupes) == 1 and "a.png = " in dupes[0] and "copy.png" in dupes[0] and "other.png" not in dupes[0]
    assert not [n for n in train_data(tmp_path, **{"dataset.instance_prompt": "x"}).notes if "tokens" in n]
