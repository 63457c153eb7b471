"""`loraforge convert` / `inspect` of FLUX.1 LoRA files (kohya <-> diffusers <-> ComfyUI-native), and the clear
refusal of the SD-only readers."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from loraforge.adapters import AdapterModule
from loraforge.adapters.math import raw_delta
from loraforge.errors import UnsupportedError
from loraforge.formats.flux_lora import flux_kohya_state_dict, flux_metadata, read_flux_lora
from loraforge.formats.lora_file import read_lora_state_dict
from loraforge.tools.convert import convert
from loraforge.tools.inspect import inspect_file

PATHS = {("unet", "transformer_blocks.0.attn.to_q"): (3072, 3072),
         ("unet", "transformer_blocks.0.attn.to_v"): (3072, 3072),
         ("unet", "single_transformer_blocks.1.proj_mlp"): (12288, 3072),
         ("unet", "norm_out.linear"): (6144, 3072),
         ("te1", "encoder.layers.0.self_attn.q_proj"): (768, 768)}


@pytest.fixture
def kohya_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    modules = [AdapterModule("", {"lora_down.weight": torch.randn(2, i, generator=g),
                                  "lora_up.weight": torch.randn(o, 2, generator=g)}, 1.0 + n, part=p, path=path)
               for n, ((p, path), (o, i)) in enumerate(PATHS.items())]
    path = tmp_path / "flux-kohya.safetensors"
    save_file(flux_kohya_state_dict(modules), str(path), metadata=flux_metadata())
    return path, {m.target: raw_delta(m) * m.scale for m in modules}


def _deltas(path):
    lora = read_flux_lora(load_file(str(path)), _header(path))
    return {t: raw_delta(m) * m.scale for t, m in lora.by_target().items()}, lora.layout


def _header(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def test_convert_kohya_diffusers_comfyui_and_back_keeps_every_delta(kohya_file, tmp_path):
    src, want = kohya_file
    diffusers = convert(src, tmp_path / "diffusers").output
    assert diffusers.name == "pytorch_lora_weights.safetensors"
    assert any(k.startswith("transformer.transformer_blocks.0.attn.to_q.lora_A") for k in load_file(str(diffusers)))
    comfy = convert(diffusers, tmp_path / "comfy.safetensors", to="comfyui").output
    assert any(k.startswith("diffusion_model.double_blocks.0.img_attn.qkv.") for k in load_file(str(comfy)))
    back = convert(comfy, tmp_path / "back.safetensors", to="kohya").output
    assert _header(back)["ss_base_model_version"] == "flux1"
    for path, layout in ((diffusers, "diffusers"), (comfy, "comfyui"), (back, "kohya")):
        got, read_layout = _deltas(path)
        assert read_layout == layout and set(got) == set(want)
        for target, delta in want.items():
            assert torch.allclose(got[target], delta, atol=1e-5), (layout, target)


def test_inspect_names_the_flux_layout_and_consumers(kohya_file):
    report = str(inspect_file(kohya_file[0]))
    assert "FLUX.1 kohya layout" in report and "family: flux" in report
    assert "ComfyUI 4/4" in report  # qkv (to_q + to_v fused), linear1, final layer, CLIP-L
    # diffusers' text-encoder conversion cannot tell the type of a CLIP part holding only q_proj: it raises
    assert "diffusers: text_encoder: ValueError" in report


def test_sd_readers_refuse_flux_files_clearly(kohya_file):
    with pytest.raises(UnsupportedError, match="FLUX.1 LoRA.*`convert`, `resize`, `merge loras`, `extract`.*`sample` with a FLUX.1 model"):
        read_lora_state_dict(load_file(str(kohya_file[0])), source="x")
