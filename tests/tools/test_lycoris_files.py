"""Files written by LyCORIS (`lycoris.kohya.create_network`) on the tiny models: the weights loraforge patches give
the same UNet and text-encoder outputs as LyCORIS's own training forward."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from loraforge.tools.common import LoraSpec, apply_lora_files, load_sd_model

from ..formats.consumer_fixtures import _OldClipNames


def _outputs(model):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49000, (1, 77), generator=g)
    cond = torch.cat([te(ids, output_hidden_states=True).hidden_states[-2] for te in model.text_encoders], dim=-1)
    sample = torch.randn(1, 4, 8, 8, generator=g)
    added = None
    if model.family.size_conditioning:
        pooled = model.text_encoders[1](ids).text_embeds
        added = {"text_embeds": pooled, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    out = model.unet(sample, torch.tensor([500]), cond, added_cond_kwargs=added).sample
    return cond, out


@pytest.mark.parametrize("family,algo,kwargs", [
    ("sd15", "loha", {}),
    ("sd15", "lokr", {"factor": 4}),
    ("sdxl", "locon", {"weight_decompose": True}),  # DoRA, LyCORIS' default output axis
])
def test_lycoris_file_applies_like_the_lycoris_forward(tiny_dirs, tmp_path, family, algo, kwargs):
    import lycoris.kohya as lk

    folder = str(tiny_dirs[family])
    ref, ours = load_sd_model(folder), load_sd_model(folder)
    tes = [_OldClipNames(ref.text_encoders[0])] + ref.text_encoders[1:]  # kohya names keep `text_model_`
    net = lk.create_network(1.0, 4, 2.0, None, tes if family == "sdxl" else tes[0], ref.unet, algo=algo,
                            preset="attn-mlp", **kwargs)
    modules = net.unet_loras + net.text_encoder_loras
    torch.manual_seed(1)
    with torch.no_grad():
        for m in modules:
            for name, p in m.named_parameters():
                p.copy_(p * 1.1 if name == "dora_scale" else torch.randn_like(p) * 0.1)
    sd = {f"{m.lora_name}.{k}": v.detach().clone() for m in modules for k, v in m.state_dict().items()}
    save_file(sd, tmp_path / "lycoris.safetensors")
    for m in modules:
        m.apply_to()

    with torch.no_grad():
        _, plain = _outputs(ours)
        assert apply_lora_files(ours, [LoraSpec(str(tmp_path / "lycoris.safetensors"))]) == len(modules)
        want_cond, want = _outputs(ref)
        got_cond, got = _outputs(ours)
    assert float((want - plain).norm() / plain.norm()) > 1e-3  # the file changes the model
    torch.testing.assert_close(got_cond, want_cond, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
