"""FLUX.1 transformer single files in the original (BFL) layout, bare and under `model.diffusion_model.`."""

import pytest
import torch
from safetensors.torch import load_file

from loraforge.errors import UnsupportedError
from loraforge.formats.flux_single_file import read_flux_transformer, save_flux_transformer

TINY = {"attention_head_dim": 16, "axes_dims_rope": [4, 6, 6], "guidance_embeds": True, "in_channels": 4,
        "joint_attention_dim": 8, "num_attention_heads": 2, "num_layers": 2, "num_single_layers": 2,
        "out_channels": None, "patch_size": 1, "pooled_projection_dim": 8}


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_tiny_transformer_round_trips_through_the_original_layout(tmp_path, prefix):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel.from_config(TINY)
    sd = model.state_dict()
    path = save_flux_transformer(sd, tmp_path / "flux1-tiny.safetensors", TINY, prefix=prefix)
    keys = set(load_file(str(path)))
    assert f"{prefix}single_blocks.1.linear1.weight" in keys and f"{prefix}final_layer.adaLN_modulation.1.bias" in keys
    assert f"{prefix}double_blocks.0.txt_attn.norm.key_norm.scale" in keys
    assert len(keys) < len(sd)  # fused
    back = read_flux_transformer(path, TINY)
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert torch.equal(back[k], v), k
    fresh = FluxTransformer2DModel.from_config(TINY)
    assert not fresh.load_state_dict(back, strict=True).missing_keys


def test_a_file_of_another_model_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, str(tmp_path / "sd.safetensors"))
    with pytest.raises(UnsupportedError, match="not a FLUX.1 transformer"):
        read_flux_transformer(tmp_path / "sd.safetensors")
