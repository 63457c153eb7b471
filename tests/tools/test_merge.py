"""merge into a model (single file and diffusers folder) and checkpoint merging, on the tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loraforge.tools.common import LoraSpec, load_sd_model, model_parts
from loraforge.errors import FamilyMismatchError, MissingKeyError, ShapeMismatchError
from loraforge.tools.merge import merge_checkpoints, merge_into_model
from loraforge.sampling.generate import generate
from loraforge.tools.sample import build_requests


def _state(model) -> dict[str, torch.Tensor]:
    out = {}
    for part, module in model_parts(model).items():
        out.update({f"{part}.{k}": v for k, v in module.state_dict().items() if not k.endswith("position_ids")})
    out.update({f"vae.{k}": v for k, v in model.vae.state_dict().items()})
    return out


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_merge_then_sample_equals_runtime_lora(trained, tmp_path, family):
    """Merged single file, loaded back through diffusers' `from_single_file`: the model holds exactly the weights
    the merge wrote, and sampling equals diffusers' runtime `load_lora_weights` with the same seed (the merged
    weights themselves are checked against W + s·ΔW in the folder test below)."""
    from safetensors.torch import load_file

    from loraforge.formats.single_file import to_single_file_state_dict

    t = trained[family]
    out = merge_into_model(str(t.model_dir), [LoraSpec(str(t.kohya))], tmp_path / "merged.safetensors")
    merged = load_sd_model(str(out), family, config_dir=str(t.model_dir))  # StableDiffusion(XL)Pipeline.from_single_file
    written = load_file(out)
    reloaded = to_single_file_state_dict(family, merged.unet, merged.vae, merged.text_encoders)
    assert reloaded.keys() == written.keys()
    for key, value in written.items():
        assert torch.equal(reloaded[key], value), key

    runtime = load_sd_model(str(t.model_dir))
    runtime.pipeline().load_lora_weights(str(t.kohya))
    path = {"sd15": "down_blocks.0", "sdxl": "down_blocks.1"}[family] + ".attentions.0.transformer_blocks.0.attn2.to_k"
    base_w = runtime.unet.get_submodule(path).base_layer.weight
    assert (merged.unet.get_submodule(path).weight - base_w).abs().max() > 1e-4  # the LoRA changes the weights
    requests = build_requests("a photo of sks robot", steps=2, width=64, height=64, seed=3, sampler="euler")
    want = generate(runtime, requests, output_type="np")[0]
    got = generate(merged, requests, output_type="np")[0]
    assert np.abs(got - want).max() < 1e-4


def test_merge_to_folder_with_part_scales(trained, single_files):
    """B was merged with UNet strength 0.5 and text-encoder strength 0 (fixture below)."""
    from loraforge.formats.lora_file import ModelTree, load_bound
    from loraforge.adapters import module_delta

    t = trained["sd15"]
    base, merged = load_sd_model(str(t.model_dir)), load_sd_model(str(single_files[2]))
    lora = load_bound(t.kohya, ModelTree.from_model(base))
    parts_b, parts_m = model_parts(base), model_parts(merged)
    for (part, path), module in lora.by_target().items():
        w0 = parts_b[part].get_submodule(path).weight
        w1 = parts_m[part].get_submodule(path).weight
        if part == "unet":
            torch.testing.assert_close(w1, w0 + 0.5 * module_delta(module, w0.shape), rtol=0, atol=1e-7)
        else:
            assert torch.equal(w1, w0)  # te scale 0
    with pytest.raises(FileExistsError, match="--overwrite"):
        merge_into_model(str(t.model_dir), [LoraSpec(str(t.kohya))], single_files[2])


def test_merge_refuses_another_family(trained, tmp_path):
    with pytest.raises(FamilyMismatchError):
        merge_into_model(str(trained["sd15"].model_dir), [LoraSpec(str(trained["sdxl"].kohya))], tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def single_files(trained, tmp_path_factory):
    """A = the tiny SD 1.5 as a single file; B = A with the LoRA merged at UNet 0.5 / text encoder 0, as a single
    file and as a diffusers folder."""
    from loraforge.tools.merge import write_model

    folder = tmp_path_factory.mktemp("ckpt")
    t = trained["sd15"]
    a = merge_into_model(str(t.model_dir), [LoraSpec(str(t.kohya), unet=0.0, te=0.0)], folder / "a.safetensors")
    b_dir = merge_into_model(str(t.model_dir), [LoraSpec(str(t.kohya), unet=0.5, te=0.0)], folder / "b")
    b = write_model(load_sd_model(str(b_dir)), folder / "b.safetensors")
    return a, b, b_dir


def test_checkpoint_weighted_sum_and_add_difference_math(single_files, tmp_path):
    from safetensors.torch import load_file

    a, b, _ = single_files
    A, B = load_file(a), load_file(b)
    out = merge_checkpoints(str(a), str(b), tmp_path / "ws.safetensors", multiplier=0.3)
    ws = load_file(out)
    assert ws.keys() == A.keys()
    for k in A:
        torch.testing.assert_close(ws[k], A[k] * 0.7 + B[k] * 0.3, rtol=0, atol=0)
    # add difference A + m·(B − C) with C = A: the LoRA's ΔW at strength m, bit for bit the same formula
    out = merge_checkpoints(str(a), str(b), tmp_path / "ad.safetensors", c=str(a), multiplier=2.0,
                            mode="add_difference")
    ad = load_file(out)
    key = next(k for k in A if k.endswith("attn2.to_k.weight"))
    assert not torch.equal(A[key], B[key])
    for k in A:
        assert torch.equal(ad[k], A[k] + (B[k] - A[k]) * 2.0), k


def test_checkpoint_merge_of_models_matches_single_file_merge(trained, single_files, tmp_path):
    """Diffusers folders go through the model path; the result equals the key-wise merge of the single files."""
    t = trained["sd15"]
    out = merge_checkpoints(str(t.model_dir), str(single_files[2]), tmp_path / "m.safetensors", multiplier=0.25)
    ref = merge_checkpoints(str(single_files[0]), str(single_files[1]), tmp_path / "r.safetensors", multiplier=0.25)
    from safetensors.torch import load_file

    got, want = load_file(out), load_file(ref)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-7)


def test_checkpoint_merge_errors(single_files, trained, tmp_path):
    from safetensors.torch import load_file, save_file

    a, b, _ = single_files
    sd = load_file(b)
    key = next(k for k in sd if k.endswith("attn1.to_q.weight"))
    save_file({k: v for k, v in sd.items() if k != key}, tmp_path / "missing.safetensors")
    with pytest.raises(MissingKeyError, match="lacks 1 keys of A"):
        merge_checkpoints(str(a), str(tmp_path / "missing.safetensors"), tmp_path / "o.safetensors")
    sd[key] = torch.zeros(3, 3)
    save_file(sd, tmp_path / "shape.safetensors")
    with pytest.raises(ShapeMismatchError, match=key):
        merge_checkpoints(str(a), str(tmp_path / "shape.safetensors"), tmp_path / "o.safetensors")
    with pytest.raises(FamilyMismatchError):
        merge_checkpoints(str(trained["sd15"].model_dir), str(trained["sdxl"].model_dir), tmp_path / "o")
    assert not (tmp_path / "o.safetensors").exists() and not (tmp_path / "o").exists()
    assert not list(tmp_path.glob(".o*"))  # no temporary leftovers


def test_add_difference_into_an_inpainting_model(tmp_path):
    """A1111's recipe: inpainting A + (custom B − base C) merges B's and C's 4 input channels into A's first 4."""
    from safetensors.torch import load_file, save_file

    conv, other = "model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.out.2.weight"
    g = torch.Generator().manual_seed(0)
    files = {}
    for name, channels in (("a", 9), ("b", 4), ("c", 4)):
        files[name] = {conv: torch.randn(8, channels, 3, 3, generator=g), other: torch.randn(4, 8, 3, 3, generator=g)}
        save_file(files[name], tmp_path / f"{name}.safetensors")
    a, b, c = (str(tmp_path / f"{n}.safetensors") for n in "abc")
    out = load_file(merge_checkpoints(a, b, tmp_path / "o.safetensors", c=c, multiplier=1.0, mode="add_difference"))
    A, B, C = files["a"], files["b"], files["c"]
    assert torch.equal(out[conv][:, 4:], A[conv][:, 4:])
    assert torch.equal(out[conv][:, :4], A[conv][:, :4] + (B[conv] - C[conv]) * 1.0)
    assert torch.equal(out[other], A[other] + (B[other] - C[other]) * 1.0)
    with pytest.raises(ShapeMismatchError, match="inpainting model must be A"):
        merge_checkpoints(b, a, tmp_path / "x.safetensors", c=c, multiplier=1.0, mode="add_difference")
