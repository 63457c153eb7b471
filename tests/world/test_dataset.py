"""Training folders from the toy world: the images show the concept, the captions name it by the trigger."""

from __future__ import annotations

import pytest
from PIL import Image

from loraforge.errors import DataError
from loraforge.world.dataset import write_concept_images, write_scenes
from loraforge.world.judge import load_judge


@pytest.mark.parametrize("concept,attribute,word", [("heart", "shape", "heart"), ("striped", "fill", "striped")])
def test_concept_images_show_the_concept_and_captions_name_it_by_the_trigger(tmp_path, concept, attribute, word):
    folder = write_concept_images(tmp_path / concept, concept, 6, trigger="zwx")
    images = [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.png"))]
    captions = [p.read_text().strip() for p in sorted(folder.glob("*.txt"))]
    assert len(images) == len(captions) == 6
    reads = load_judge().read(images)
    assert all(r[attribute] == word for r in reads)
    assert all("zwx" in c and word not in c for c in captions), captions
    if attribute == "fill":  # the style word stands where the caption says the fill: "a large zwx red circle ..."
        assert all(c.split()[1] in ("small", "large") and c.split()[2] == "zwx" for c in captions), captions
    again = write_concept_images(tmp_path / "again", concept, 6, trigger="zwx")
    assert [p.read_bytes() for p in sorted(again.glob("*"))] == [p.read_bytes() for p in sorted(folder.glob("*"))]


def test_scenes_are_base_world_images_with_full_captions(tmp_path):
    folder = write_scenes(tmp_path / "s", 5, seed=3)
    reads = load_judge().read([Image.open(p).convert("RGB") for p in sorted(folder.glob("*.png"))])
    for r, txt in zip(reads, sorted(folder.glob("*.txt"))):
        text = txt.read_text()
        assert r["fill"] == "filled" and r["shape"] != "heart"
        assert f"{r['colour']} {r['shape']} on a {r['background']} background, {r['position']}" in text


def test_a_folder_with_files_is_not_overwritten_unless_asked(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "mine.png").write_bytes(b"x")
    with pytest.raises(DataError, match="already holds files"):
        write_concept_images(tmp_path / "d", "heart", 2)
    assert (tmp_path / "d" / "mine.png").exists()
    write_concept_images(tmp_path / "d", "heart", 2, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["0000.png", "0000.txt", "0001.png", "0001.txt"]
    with pytest.raises(DataError, match="held-out concepts"):
        write_concept_images(tmp_path / "e", "circle", 2)
