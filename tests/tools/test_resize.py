"""resize: full rank reproduces ΔW, lower ranks keep the reported Frobenius share and the alpha/rank scale, the rank
rules on a known spectrum, LoCon / Tucker / LoHa modules, the recipe with the checkpoint reference."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from loraforge.formats.lora_file import load_lora_file
from loraforge.adapters import module_delta
from loraforge.errors import ToolError
from loraforge.tools.resize import resize_lora
from loraforge.tools.svd import RankRule, parse_recipe

Q_NAME = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"  # 32x32 in the tiny SD 1.5


def _orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))[0]


def _spectrum_module(sigmas, n_out=32, n_in=32, alpha=2.0, name=Q_NAME) -> dict:
    """A LoRA module whose ΔW = alpha/r · up @ down has exactly the singular values `sigmas`."""
    r = len(sigmas)
    scale = alpha / r
    u, v = _orthonormal(n_out, r, 0), _orthonormal(n_in, r, 1)
    up = (u * torch.tensor(sigmas, dtype=torch.float64) / scale).float().contiguous()
    return {f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": v.T.float().contiguous(),
            f"{name}.alpha": torch.tensor(alpha)}


def _delta(path, name):
    m = load_lora_file(path).modules[name]
    shape = (m.tensors["lora_up.weight"].shape[0], *m.tensors["lora_down.weight"].shape[1:])
    if "lora_mid.weight" in m.tensors:
        shape = (shape[0], shape[1], *m.tensors["lora_mid.weight"].shape[2:])
    return module_delta(m, shape), m


def test_trained_lora_full_and_lower_rank(trained, tmp_path):
    src = trained["sd15"].kohya
    full = resize_lora(src, tmp_path / "r4.safetensors", RankRule(rank=4))
    low = resize_lora(src, tmp_path / "r2.safetensors", RankRule(rank=2))
    before = load_lora_file(src)
    assert len(full.resized) == len(before.modules) == len(low.resized)
    for report in low.modules:
        d0, m0 = _delta(src, report.name)
        d4, _ = _delta(tmp_path / "r4.safetensors", report.name)
        d2, m2 = _delta(tmp_path / "r2.safetensors", report.name)
        assert float((d4 - d0).norm() / d0.norm()) < 1e-5
        assert report.new_rank == m2.rank == 2
        assert math.isclose(float(d2.norm() / d0.norm()), report.fro_share, rel_tol=1e-4)
        assert math.isclose(m2.alpha / m2.rank, m0.alpha / m0.rank)  # alpha semantics: same alpha/rank scale
    text = "\n".join(low.lines())
    assert "rank 4 → 2, Frobenius kept mean" in text and f"{low.modules[0].name}" in text
    meta = load_lora_file(tmp_path / "r2.safetensors").metadata
    assert meta["ss_network_dim"] == "2" and meta["ss_network_alpha"] == "1" and "loraforge_resize" in meta


@pytest.mark.parametrize("rule,rank", [
    (RankRule(method="sv_ratio", param=5), 3),  # keep σ > 8/5
    (RankRule(method="sv_cumulative", param=0.8), 2),  # Σσ: 8/15, 12/15 ≥ 0.8
    (RankRule(method="sv_fro", param=0.95), 2),  # √(80/85) = 0.970
    (RankRule(method="sv_fro", param=0.95, rank=1), 1),  # the rank caps the rule
    (RankRule(recipe=parse_recipe("spn_lora=1,thr=-0.5")), 2),  # σ/σ₁ > 10^-0.5
    (RankRule(recipe=parse_recipe("fro_lora=1,thr=-0.8")), 3),  # σ/‖σ‖ > 0.158 (‖σ‖ = 9.22)
    (RankRule(rank=2), 2),
])
def test_rank_rules_on_a_known_spectrum(tmp_path, rule, rank):
    save_file(_spectrum_module([8.0, 4.0, 2.0, 1.0]), tmp_path / "in.safetensors")
    result = resize_lora(tmp_path / "in.safetensors", tmp_path / "out.safetensors", rule)
    report = result.modules[0]
    assert report.new_rank == rank
    sig = torch.tensor([8.0, 4.0, 2.0, 1.0])
    assert math.isclose(report.fro_share, float(sig[:rank].norm() / sig.norm()), rel_tol=1e-6)
    d, m = _delta(tmp_path / "out.safetensors", Q_NAME)
    s = torch.linalg.svdvals(d.double())
    torch.testing.assert_close(s[:rank], sig[:rank].double(), rtol=1e-5, atol=1e-5)
    assert m.alpha == pytest.approx(0.5 * rank)  # alpha/rank stays 2/4


def test_fro_ckpt_recipe_uses_the_base_weight(trained, tmp_path):
    """resize_lora's recipe fro_ckpt=1,thr=-3.55: keep σᵢ / ‖W_base‖_F > 10^-3.55."""
    from loraforge.tools.common import load_sd_model

    base = str(trained["sd15"].model_dir)
    weight = load_sd_model(base).unet.get_submodule(
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q").weight.detach()
    norm = float(weight.norm())
    save_file(_spectrum_module([norm * 10**e for e in (-2.0, -3.0, -3.5, -4.0)]), tmp_path / "in.safetensors")
    rule = RankRule(recipe=parse_recipe("fro_ckpt=1,thr=-3.55"))
    with pytest.raises(ToolError, match="--base"):
        resize_lora(tmp_path / "in.safetensors", tmp_path / "o.safetensors", rule)
    result = resize_lora(tmp_path / "in.safetensors", tmp_path / "out.safetensors", rule, base=base)
    assert result.modules[0].new_rank == 3


def test_locon_tucker_loha_and_unknown_keys(tmp_path):
    g = torch.Generator().manual_seed(0)
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    tucker = "lora_unet_down_blocks_0_resnets_0_conv2"
    loha = "lora_unet_conv_in"
    sd = {
        f"{conv}.lora_down.weight": torch.randn(4, 8, 3, 3, generator=g),
        f"{conv}.lora_up.weight": torch.randn(16, 4, 1, 1, generator=g), f"{conv}.alpha": torch.tensor(4.0),
        f"{tucker}.lora_down.weight": torch.randn(4, 8, 1, 1, generator=g),
        f"{tucker}.lora_mid.weight": torch.randn(4, 4, 3, 3, generator=g),
        f"{tucker}.lora_up.weight": torch.randn(16, 4, 1, 1, generator=g), f"{tucker}.alpha": torch.tensor(2.0),
        f"{loha}.hada_w1_a": torch.randn(16, 2, generator=g), f"{loha}.hada_w1_b": torch.randn(2, 36, generator=g),
        f"{loha}.hada_w2_a": torch.randn(16, 2, generator=g), f"{loha}.hada_w2_b": torch.randn(2, 36, generator=g),
        f"{loha}.alpha": torch.tensor(1.0),
        "lora_unet_mystery.weird": torch.ones(3),
    }
    save_file(sd, tmp_path / "in.safetensors")
    result = resize_lora(tmp_path / "in.safetensors", tmp_path / "full.safetensors", RankRule(rank=8))
    out = load_file(tmp_path / "full.safetensors")
    assert f"{tucker}.lora_mid.weight" not in out  # Tucker comes out as plain LoCon
    assert out[f"{conv}.lora_down.weight"].shape == (4, 8, 3, 3) and out[f"{tucker}.lora_up.weight"].shape[1] <= 4
    for name in (conv, tucker):
        d0, _ = _delta(tmp_path / "in.safetensors", name)
        d1, _ = _delta(tmp_path / "full.safetensors", name)
        assert float((d1 - d0).norm() / d0.norm()) < 1e-5
    for key in (k for k in sd if k.startswith((loha, "lora_unet_mystery"))):
        assert torch.equal(out[key], sd[key])  # copied unchanged
    kept = {m.name: m.note for m in result.modules if m.new_rank is None}
    assert "resize re-ranks LoRA / LoCon only" in kept[loha]
    assert result.unknown == {"lora_unet_mystery.weird": "unknown tensor suffix"}
    low = resize_lora(tmp_path / "in.safetensors", tmp_path / "low.safetensors", RankRule(rank=2, conv_rank=1))
    assert {m.name: m.new_rank for m in low.resized} == {conv: 1, tucker: 1}  # conv_rank for k×k convolutions


def test_recipe_parsing_errors():
    with pytest.raises(ToolError, match="size budgets"):
        parse_recipe("fro_ckpt=1,size=8")
    with pytest.raises(ToolError, match="threshold"):
        parse_recipe("fro_ckpt=1")
    with pytest.raises(ToolError, match="rank method"):
        RankRule(method="sv_magic", param=1)


def test_diffusers_layout_comes_out_in_kohya_layout(trained, tmp_path):
    t = trained["sdxl"]
    resize_lora(t.diffusers, tmp_path / "r.safetensors", RankRule(rank=2), base=str(t.model_dir))
    out = load_lora_file(tmp_path / "r.safetensors")
    assert out.style == "kohya" and not out.unknown and "lora_adapter_metadata" not in out.metadata
    reference = load_lora_file(t.kohya)
    assert set(out.modules) == set(reference.modules)  # the trainer's own kohya names (SGM for SDXL)
    name = next(iter(reference.modules))
    assert out.modules[name].scale == reference.modules[name].scale == 0.5
