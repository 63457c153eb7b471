"""Captions come from metadata.jsonl, sidecar files or the instance prompt; bad images stop the run up front."""

import json

import pytest
from PIL import Image

from loraforge.config import load_config
from loraforge.data.check import validate_items
from loraforge.errors import DataError
from loraforge.data.build import collect_all
from loraforge.data.sources import DEMO_INSTANCE_PROMPT, demo_dir


def img(path, size=(128, 96), color=(200, 30, 30)):
    Image.new("RGB", size, color).save(path)
    return path


def cfg(**kv):
    return load_config(None, [f"dataset.{k}={v!r}" if isinstance(v, str) else f"dataset.{k}={v}" for k, v in kv.items()]).dataset


def collect_items(dataset):
    """The images and captions of a run whose only source is `[dataset]` (instance_dir or the demo images)."""
    run = load_config(None)
    run.dataset = dataset
    return collect_all(run, 64).items


def test_demo_images_ship_with_captions():
    items = collect_items(cfg())
    assert len(items) == 8 and all(i.caption_source == "sidecar" for i in items)
    assert all("sks robot" in i.caption for i in items)
    assert demo_dir().is_dir()


def test_caption_priority_metadata_then_sidecar_then_instance_prompt(tmp_path):
    for n in "abc":
        img(tmp_path / f"{n}.png")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "from metadata"}) + "\n")
    (tmp_path / "a.txt").write_text("sidecar loses to metadata")
    (tmp_path / "b.txt").write_text("from sidecar\nsecond line ignored")
    items = collect_items(cfg(instance_dir=str(tmp_path), instance_prompt="a photo of sks dog"))
    got = {i.path.name: (i.caption, i.caption_source) for i in items}
    assert got == {
        "a.png": ("from metadata", "metadata"),
        "b.png": ("from sidecar", "sidecar"),
        "c.png": ("a photo of sks dog", "instance_prompt"),
    }


def test_caption_column_and_extension(tmp_path):
    img(tmp_path / "a.jpg")
    img(tmp_path / "b.jpg")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.jpg", "prompt": "p", "other": "o"}) + "\n")
    (tmp_path / "b.caption").write_text("kohya extension")
    items = collect_items(cfg(instance_dir=str(tmp_path), caption_column="other", caption_extension=".caption"))
    assert [i.caption for i in items] == ["o", "kohya extension"]


def test_missing_captions_are_listed(tmp_path):
    img(tmp_path / "a.png")
    with pytest.raises(DataError, match="no caption.*instance_prompt") as e:
        collect_items(cfg(instance_dir=str(tmp_path)))
    assert e.value.problems == [str(tmp_path / "a.png")]


def test_bad_metadata_line_named(tmp_path):
    img(tmp_path / "a.png")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "ok"}\nnot json\n')
    with pytest.raises(DataError) as e:
        collect_items(cfg(instance_dir=str(tmp_path)))
    assert "metadata.jsonl:2: not a JSON object" in e.value.problems[0]


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(DataError, match="holds no images"):
        collect_items(cfg(instance_dir=str(tmp_path)))
    with pytest.raises(DataError, match="no such folder"):
        collect_items(cfg(instance_dir=str(tmp_path / "nope")))


def test_bad_and_small_images_are_listed_and_stop_training(tmp_path):
    img(tmp_path / "good.png", (256, 256))
    img(tmp_path / "small.png", (40, 300))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    c = cfg(instance_dir=str(tmp_path), instance_prompt="x")
    items = collect_items(c)
    with pytest.raises(DataError, match="2 of 3 image") as e:
        validate_items(items, c, 128)
    text = "\n".join(e.value.problems)
    assert f"{tmp_path / 'broken.png'}: unreadable" in text
    assert f"{tmp_path / 'small.png'}: too small: 40×300" in text and "at least 64 px" in text
    c2 = cfg(instance_dir=str(tmp_path), instance_prompt="x", skip_bad_images=True)
    assert [i.path.name for i in validate_items(items, c2, 128)] == ["good.png"]


def test_demo_prompt_is_the_default_instance_prompt():
    assert DEMO_INSTANCE_PROMPT == "a photo of sks robot"
