"""The toy model: one-file weights become a diffusers folder (checksum checked), named "toy", native size 64 px."""

from __future__ import annotations

import json

import pytest

from loraforge.config.model import ModelConfig
from loraforge.errors import ModelLoadError
from loraforge.models import toy
from loraforge.models.loading import load_model, native_size, resolve_model_name
from loraforge.utils.files import save_safetensors_atomic


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """Weights in the shipped one-file layout, from a randomly initialised toy pipeline, with their report."""
    import torch

    torch.manual_seed(0)
    pipe = toy.toy_pipeline()
    tensors = {f"{part}.{k}": v.half() for part in ("unet", "vae", "text_encoder")
               for k, v in getattr(pipe, part).state_dict().items()}
    weights, report = tmp_path / "toy-sd15.safetensors", tmp_path / "toy-sd15.json"
    save_safetensors_atomic(tensors, weights, metadata={"vae_scaling_factor": "0.5"})
    report.write_text(json.dumps({"sha256": toy.sha256(weights)}))
    monkeypatch.setattr(toy, "WEIGHTS", weights)
    monkeypatch.setattr(toy, "REPORT", report)
    return pipe


def test_missing_weights_say_how_to_build_them(tmp_path, monkeypatch):
    monkeypatch.setattr(toy, "WEIGHTS", tmp_path / "none.safetensors")
    with pytest.raises(ModelLoadError, match="scripts/pretrain_toy.py"):
        resolve_model_name("toy")


def test_shipped_weights_become_a_folder_that_loads_as_toy_at_64_px(shipped, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no folder called "toy" here
    monkeypatch.setenv("LORAFORGE_HOME", str(tmp_path / "home"))
    folder = resolve_model_name("toy")
    assert folder.startswith(str(tmp_path / "home")) and "toy-sd15-" in folder
    cfg = ModelConfig(pretrained_model_name_or_path="toy")
    assert native_size(cfg, "sd15", False) == 64
    model = load_model(cfg)
    assert model.native_size == 64 and model.vae.config.scaling_factor == 0.5
    ours = dict(model.unet.named_parameters())
    for name, p in list(shipped.unet.named_parameters())[:5]:
        assert (ours[name] == p.half().float()).all(), name


def test_a_damaged_file_is_refused_by_its_checksum(shipped, tmp_path, monkeypatch):
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
