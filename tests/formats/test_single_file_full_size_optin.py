"""Opt-in (LORAFORGE_FULL_SIZE=1): full-size random fp16 pipelines -> single file -> `models.loading.load_model` with
the code-written config folder (no `config_dir` given) -> every tensor equal. SD 1.5 takes ~30 s and ~5 GB; SDXL
minutes and ~15 GB, so they are not part of the default run."""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.skipif(
    os.environ.get("LORAFORGE_FULL_SIZE") != "1", reason="full-size single-file round trip: set LORAFORGE_FULL_SIZE=1"
)


def _random_fp16(build):
    """Build on meta, then allocate in fp16 and fill with small random values (much cheaper than a real init)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        with torch.device("meta"):
            model = build()
        model.to_empty(device="cpu")
    finally:
        torch.set_default_dtype(previous)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float16) * 0.02)
    return model


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_full_size_round_trip(family, tmp_path, monkeypatch):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from loraforge.config.model import ModelConfig
    from loraforge.families import full_size_config
    from loraforge.formats.single_file import save_single_file
    from loraforge.models.loading import load_model

    monkeypatch.setenv("LORAFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models = {
        "unet": _random_fp16(lambda: UNet2DConditionModel.from_config(full_size_config(family, "unet"))),
        "vae": _random_fp16(lambda: AutoencoderKL.from_config(full_size_config(family, "vae"))),
        "text_encoder": _random_fp16(
            lambda: CLIPTextModel(CLIPTextConfig.from_dict(full_size_config(family, "text_encoder")))
        ),
    }
    if family == "sdxl":
        models["text_encoder_2"] = _random_fp16(
            lambda: CLIPTextModelWithProjection(CLIPTextConfig.from_dict(full_size_config(family, "text_encoder_2")))
        )
    tes = [models["text_encoder"]] + ([models["text_encoder_2"]] if family == "sdxl" else [])
    path = save_single_file(tmp_path / "model.safetensors", family, models["unet"], models["vae"], tes)
    cfg = ModelConfig(pretrained_model_name_or_path=str(path), family=family)
    pipe = load_model(cfg, dtype=torch.float16).pipeline()
    for name, model in models.items():
        a, b = model.state_dict(), getattr(pipe, name).state_dict()
        a = {k: v for k, v in a.items() if not k.endswith("position_ids")}
        b = {k: v for k, v in b.items() if not k.endswith("position_ids")}
        assert a.keys() == b.keys(), name
        bad = [k for k in a if not torch.equal(a[k], b[k])]
        assert not bad, f"{family}.{name}: {bad[:5]}"
