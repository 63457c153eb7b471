"""Datasets by name through the `datasets` library, here a local ImageFolder with a caption column."""

import json

import pytest
from PIL import Image

from loraforge.config import load_config
from loraforge.data.build import build_train_data
from loraforge.errors import DataError


@pytest.fixture
def imagefolder(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    folder = tmp_path / "folder"
    folder.mkdir()
    rows = []
    for i, size in enumerate([(64, 64), (80, 64), (64, 96)]):
        Image.new("RGB", size, (i * 70, 20, 20)).save(folder / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "description": f"a red square number {i}", "text": f"other {i}"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_local_imagefolder_with_a_caption_column(imagefolder):
    cfg = load_config(None, [f"dataset.dataset_name={str(imagefolder)!r}", "dataset.caption_column='description'",
                             "dataset.caption_prefix='pre'"])
    data = build_train_data(cfg, 64)
    got = sorted((it.path.name, it.caption) for it in data.items)
    assert got == [(f"{i}.png", f"a red square number {i}") for i in range(3)]
    assert all(it.is_file for it in data.items)
    ex = data.dataset[0]
    assert ex.pixel_values.shape == (3, 64, 64) and ex.caption.startswith("pre a red square")
    auto = build_train_data(load_config(None, [f"dataset.dataset_name={str(imagefolder)!r}"]), 64)
    assert sorted(it.caption for it in auto.items) == ["other 0", "other 1", "other 2"]


def test_bad_columns_are_named(imagefolder):
    with pytest.raises(DataError, match="caption_column = 'nope' is not a column.*description"):
        build_train_data(load_config(None, [f"dataset.dataset_name={str(imagefolder)!r}",
                                            "dataset.caption_column='nope'"]), 64)
    with pytest.raises(DataError, match="image_column = 'img' is not a column"):
        build_train_data(load_config(None, [f"dataset.dataset_name={str(imagefolder)!r}",
                                            "dataset.image_column='img'"]), 64)


def test_rows_with_image_bytes_only(tmp_path):
    """Hub datasets (parquet) hold encoded images, not files: they are read from memory."""
    import io

    from loraforge.data.dataset import ImageCaptionDataset
    from loraforge.data.sources import ImageItem

    buf = io.BytesIO()
    Image.new("RGB", (70, 64), (0, 200, 0)).save(buf, format="PNG")
    item = ImageItem(tmp_path / "hub:x/0", "green", "dataset", 0, buf.getvalue())
    ex = ImageCaptionDataset([item], 64)[0]
    assert ex.original_size == (64, 70) and ex.pixel_values[1].mean() > 0.5
