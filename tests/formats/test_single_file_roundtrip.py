"""Tiny SD 1.5 / SD 2.x / SDXL pipelines -> original-layout single file -> diffusers `from_single_file`: bit-equal."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from loraforge.errors import FamilyMismatchError, ToolError  # noqa: E402
from loraforge.config.model import ModelConfig  # noqa: E402
from loraforge.formats.single_file import save_single_file, to_single_file_state_dict  # noqa: E402
from loraforge.models.loading import load_model  # noqa: E402


def _builders():
    from loraforge.models.tiny import BUILDERS

    return BUILDERS


def _text_encoders(pipe):
    return [pipe.text_encoder] + ([pipe.text_encoder_2] if getattr(pipe, "text_encoder_2", None) is not None else [])


def _make(family, tmp_path_factory):
    pipe = _builders()[family]()
    root = tmp_path_factory.mktemp(f"ldm-{family}")
    pipe.save_pretrained(root / "diffusers")  # its configs, tokenizers and scheduler describe the single file
    path = save_single_file(root / "model.safetensors", family, pipe.unet, pipe.vae, _text_encoders(pipe))
    cfg = ModelConfig(pretrained_model_name_or_path=str(path), family=family, config_dir=str(root / "diffusers"))
    loaded = load_model(cfg).pipeline()  # the one single-file loader training and the tools use
    return pipe, loaded, path


@pytest.fixture(scope="session")
def ldm_tiny_sd15_roundtrip(tmp_path_factory):
    return _make("sd15", tmp_path_factory)


@pytest.fixture(scope="session")
def ldm_tiny_sd2_roundtrip(tmp_path_factory):
    return _make("sd2", tmp_path_factory)


@pytest.fixture(scope="session")
def ldm_tiny_sdxl_roundtrip(tmp_path_factory):
    return _make("sdxl", tmp_path_factory)


@pytest.fixture(params=["sd15", "sd2", "sdxl"])
def ldm_roundtrip(request):
    return request.param, request.getfixturevalue(f"ldm_tiny_{request.param}_roundtrip")


def _assert_same_tensors(a, b, what):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys(), f"{what}: key sets differ: {sorted(set(sa) ^ set(sb))[:5]}"
    for k in sa:
        assert sb[k].device.type == "cpu", f"{what}.{k} left on {sb[k].device}"
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), f"{what}.{k} differs"


def test_components_bit_equal(ldm_roundtrip):
    family, (src, loaded, _) = ldm_roundtrip
    names = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if family == "sdxl" else [])
    for name in names:
        _assert_same_tensors(getattr(src, name), getattr(loaded, name), f"{family}.{name}")
    assert type(loaded.scheduler) is type(src.scheduler)
    assert loaded.scheduler.config.prediction_type == src.scheduler.config.prediction_type
    assert loaded.vae.config.scaling_factor == src.vae.config.scaling_factor
    assert loaded.tokenizer.pad_token == src.tokenizer.pad_token
    if family == "sdxl":
        assert loaded.tokenizer_2.pad_token_id == 0  # `!`, as in the official tokenizer_2


def test_image_identical(ldm_roundtrip):
    family, (src, loaded, _) = ldm_roundtrip
    images = []
    for pipe in (src, loaded):
        generator = torch.Generator("cpu").manual_seed(1234)
        out = pipe("a photo of a cat", num_inference_steps=2, height=64, width=64, generator=generator,
                   output_type="np")
        images.append(out.images)
    assert images[0].shape == (1, 64, 64, 3)
    assert np.array_equal(images[0], images[1]), f"{family}: images differ"


def test_written_layout(ldm_roundtrip):
    from safetensors import safe_open

    family, (src, _, path) = ldm_roundtrip
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        assert f.metadata().get("format") == "pt"
    assert keys == set(to_single_file_state_dict(family, src.unet, src.vae, _text_encoders(src)))
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    assert not any(k.endswith("position_ids") for k in keys)
    if family == "sd15":
        assert "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight" in keys
    elif family == "sd2":
        assert "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight" in keys
        assert "cond_stage_model.model.text_projection" not in keys
    else:
        assert "model.diffusion_model.label_emb.0.0.weight" in keys
        assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in keys
        assert "conditioner.embedders.1.model.text_projection" in keys


def test_dtype_cast(ldm_tiny_sd15_roundtrip, tmp_path):
    from safetensors.torch import load_file

    src, _, _ = ldm_tiny_sd15_roundtrip
    path = save_single_file(tmp_path / "half.safetensors", "sd15", src.unet, src.vae, [src.text_encoder],
                            dtype=torch.float16, metadata={"note": "x"})
    tensors = load_file(str(path))
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    assert next(src.unet.parameters()).dtype == torch.float32  # the models are left alone


def test_refuses_overwrite(ldm_tiny_sd15_roundtrip, tmp_path):
    src, _, _ = ldm_tiny_sd15_roundtrip
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_single_file(target, "sd15", src.unet, src.vae, [src.text_encoder])
    assert target.read_bytes() == b"keep me"
    save_single_file(target, "sd15", src.unet, src.vae, [src.text_encoder], overwrite=True)
    assert target.stat().st_size > 1000


def test_atomic_on_writer_error(ldm_tiny_sd15_roundtrip, tmp_path, monkeypatch):
    import safetensors.torch

    src, _, _ = ldm_tiny_sd15_roundtrip

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_single_file(tmp_path / "m.safetensors", "sd15", src.unet, src.vae, [src.text_encoder])
    assert list(tmp_path.iterdir()) == []

    old = tmp_path / "old.safetensors"
    old.write_bytes(b"previous")
    with pytest.raises(OSError, match="disk full"):
        save_single_file(old, "sd15", src.unet, src.vae, [src.text_encoder], overwrite=True)
    assert old.read_bytes() == b"previous" and list(tmp_path.iterdir()) == [old]


def test_argument_checks(ldm_tiny_sd15_roundtrip, tmp_path):
    src, _, _ = ldm_tiny_sd15_roundtrip
    with pytest.raises(ToolError, match=r"\.safetensors"):
        save_single_file(tmp_path / "m.ckpt", "sd15", src.unet, src.vae, [src.text_encoder])
    with pytest.raises(ValueError, match="unknown family"):
        to_single_file_state_dict("sd3", src.unet, src.vae, [src.text_encoder])
    with pytest.raises(FamilyMismatchError, match="text encoder"):
        to_single_file_state_dict("sd15", src.unet, src.vae, [src.text_encoder, src.text_encoder])
    with pytest.raises(FamilyMismatchError, match="does not match the UNet"):
        to_single_file_state_dict("sdxl", src.unet, src.vae, [src.text_encoder, src.text_encoder])


def test_refuses_unmerged_adapters(ldm_tiny_sd15_roundtrip):
    import copy

    from peft import LoraConfig

    src, _, _ = ldm_tiny_sd15_roundtrip
    unet = copy.deepcopy(src.unet)
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k"]))
    with pytest.raises(ValueError, match="merge and unload"):
        to_single_file_state_dict("sd15", unet, src.vae, [src.text_encoder])


def test_warns_on_sdxl_text_encoders_of_equal_width(ldm_tiny_sdxl_roundtrip):
    src, _, _ = ldm_tiny_sdxl_roundtrip
    # a stand-in TE2 as wide as TE1: diffusers' loader would then put TE1's weights into text_encoder_2
    from transformers import CLIPTextModelWithProjection

    te2 = CLIPTextModelWithProjection(src.text_encoder.config)
    with pytest.warns(UserWarning, match="equal width"):
        to_single_file_state_dict("sdxl", src.unet, src.vae, [src.text_encoder, te2])
