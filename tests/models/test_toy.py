"""The toy model: one-file weights become a diffusers folder (checksum checked), named "toy", native size 64 px."""

from __future__ import annotations

import pytest

from loraforge.config.model import ModelConfig
from loraforge.errors import ModelLoadError
from loraforge.models import toy
from loraforge.models.loading import load_model, native_size, resolve_model_name


def test_missing_weights_say_how_to_build_them(tmp_path, monkeypatch):
    monkeypatch.setattr(toy, "WEIGHTS", tmp_path / "none.safetensors")
    with pytest.raises(ModelLoadError, match="scripts/pretrain_toy.py"):
        resolve_model_name("toy")


def test_shipped_weights_become_a_folder_that_loads_as_toy_at_64_px(random_toy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no folder called "toy" here
    monkeypatch.setenv("LORAFORGE_HOME", str(tmp_path / "home"))
    folder = resolve_model_name("toy")
    assert folder.startswith(str(tmp_path / "home")) and "toy-sd15-" in folder
    cfg = ModelConfig(pretrained_model_name_or_path="toy")
    assert native_size(cfg, "sd15", False) == 64
    model = load_model(cfg)
    assert model.native_size == 64 and model.vae.config.scaling_factor == 0.5
    ours = dict(model.unet.named_parameters())
    for name, p in list(random_toy.unet.named_parameters())[:5]:
        assert (ours[name] == p.half().float()).all(), name


def test_a_damaged_file_is_refused_by_its_checksum(random_toy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = bytearray(toy.WEIGHTS.read_bytes())
    data[-1] ^= 0xFF
    toy.WEIGHTS.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="checksum .* differs"):
        resolve_model_name("toy")


def test_a_local_folder_named_toy_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy").mkdir()
    assert resolve_model_name("toy") == "toy"
