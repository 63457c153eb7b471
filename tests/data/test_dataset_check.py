"""`loraforge dataset check DIR`: the summary of a training folder, and exit 2 on what would stop training."""

import numpy as np
from PIL import Image

from loraforge.cli import main
from loraforge.config.dataset import DatasetConfig
from loraforge.data.summary import summarize_folder


def _image(path, w, h, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _folder(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    _image(d / "wide.png", 96, 64, 1)
    (d / "wide.txt").write_text("a wide one")
    _image(d / "tall.png", 64, 96, 2)
    (d / "tall.txt").write_text("a tall one")
    _image(d / "copy.png", 96, 64, 1)  # the same bytes as wide.png
    (d / "copy.txt").write_text("a copy")
    return d


def test_a_clean_folder_passes_with_sizes_buckets_and_duplicates(tmp_path, capsys):
    d = _folder(tmp_path)
    summary = summarize_folder(d, DatasetConfig(enable_bucket=True, bucket_reso_steps=8), 64)
    assert not summary.problems
    by_name = {i.path.name: i for i in summary.images}
    assert by_name["wide.png"].size == (96, 64) and by_name["tall.png"].size == (64, 96)
    w, h = by_name["wide.png"].bucket
    assert w > h and by_name["tall.png"].bucket == (h, w)  # landscape and portrait buckets of the same area
    assert any("duplicate" in n and "copy.png" in n and "wide.png" in n for n in summary.notes)
    assert main(["dataset", "check", str(d), "--resolution", "64"]) == 0
    out = capsys.readouterr().out
    assert "3 image(s)" in out and "captions: sidecar 3" in out and "OK" in out and "note: duplicate" in out


def test_problems_that_stop_training_exit_2_with_each_file_named(tmp_path, capsys):
    d = _folder(tmp_path)
    (d / "broken.png").write_bytes(b"not a png")
    (d / "broken.txt").write_text("x")
    _image(d / "tiny.png", 16, 16)
    (d / "tiny.txt").write_text("small")
    _image(d / "nocap.png", 64, 64, 3)
    _image(d / "emptycap.png", 64, 64, 4)
    (d / "emptycap.txt").write_text("  \n")
    (d / "scan.tiff").write_bytes(b"II*")
    assert main(["dataset", "check", str(d), "--resolution", "64"]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert "4 problem(s)" in err
    assert "broken.png: unreadable" in err and "tiny.png: too small: 16×16" in err
    assert "nocap.png: no caption (no .txt sidecar" in err and "emptycap.png: no caption (the caption file is empty" in err
    assert "captions: sidecar 5, empty 1, missing 1" in captured.out
    assert "scan.tiff: skipped" in captured.out
    # with an instance_prompt the uncaptioned images train with it; skip_bad_images turns bad files into notes
    summary = summarize_folder(d, DatasetConfig(instance_prompt="a sks toy", skip_bad_images=True), 64)
    assert not summary.problems and sum("broken.png" in n or "tiny.png" in n for n in summary.notes) == 2


def test_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["dataset", "check", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
