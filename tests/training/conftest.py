"""Fixtures of the training tests."""

import shutil

import pytest

from loraforge.data.sources import demo_dir


@pytest.fixture
def tok_images(tmp_path):
    """Four demo images in a folder, for runs whose `dataset.instance_prompt` names the token abstraction (TOK)."""
    folder = tmp_path / "tok"
    folder.mkdir()
    for p in sorted(demo_dir().glob("*.png"))[:4]:
        shutil.copy(p, folder / p.name)
    return folder
