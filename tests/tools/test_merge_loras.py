"""LoRA with LoRA: concat is exact, svd keeps the reported share, cloneofsimo's interpolation formula, files in
different naming styles merge by module."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from loraforge.formats.lora_file import ModelTree, load_bound
from loraforge.adapters import module_delta
from loraforge.formats.kohya import kohya_module_name
from loraforge.errors import UnsupportedError
from loraforge.tools.merge_loras import merge_loras
from loraforge.tools.svd import RankRule


@pytest.fixture(scope="module")
def pair(trained, tmp_path_factory):
    """The trained SD 1.5 LoRA (diffusers kohya names) and a second random one on the same modules, rank 4,
    alpha 1, written with LDM names (lora_unet_input_blocks_...)."""
    t = trained["sd15"]
    tree = ModelTree.from_folder(t.model_dir)
    first = load_bound(t.kohya, tree)
    g = torch.Generator().manual_seed(0)
    sd = {}
    for (part, path), m in first.by_target().items():
        name = kohya_module_name(part, path, tree.family, tree.unet_config, "ldm")
        up, down = m.tensors["lora_up.weight"], m.tensors["lora_down.weight"]
        sd[f"{name}.lora_up.weight"] = 0.05 * torch.randn(up.shape, generator=g)
        sd[f"{name}.lora_down.weight"] = torch.randn(down.shape, generator=g)
        sd[f"{name}.alpha"] = torch.tensor(1.0)
    second = tmp_path_factory.mktemp("pair") / "second.safetensors"
    save_file(sd, second)
    assert any(k.startswith("lora_unet_input_blocks_") for k in sd)
    return tree, t.kohya, second, str(t.model_dir)


def _deltas(path, tree):
    lora = load_bound(path, tree)
    return {t: module_delta(m, tree.shape(*t)) for t, m in lora.by_target().items()}, lora


def test_concat_is_exact(pair, tmp_path):
    tree, a, b, base = pair
    out = tmp_path / "concat.safetensors"
    result = merge_loras([(str(a), 0.7), (str(b), -0.4)], out, mode="concat", base=base)
    da, _ = _deltas(a, tree)
    db, _ = _deltas(b, tree)
    merged, lora = _deltas(out, tree)
    assert merged.keys() == da.keys()
    for t, d in merged.items():
        torch.testing.assert_close(d, 0.7 * da[t] - 0.4 * db[t], rtol=1e-5, atol=1e-7)
    assert {m.rank for m in lora.modules.values()} == {8}
    assert all("." not in n and not n.startswith("lora_unet_input") for n in lora.modules)  # first file's names
    assert result.lines()[0].startswith("concat: ")


def test_svd_merge_full_and_reduced_rank(pair, tmp_path):
    tree, a, b, base = pair
    da, _ = _deltas(a, tree)
    db, _ = _deltas(b, tree)
    full = merge_loras([(str(a), 1.0), (str(b), 0.5)], tmp_path / "f.safetensors", mode="svd", rule=RankRule(rank=8),
                       base=base)
    merged, _ = _deltas(tmp_path / "f.safetensors", tree)
    for t, d in merged.items():
        want = da[t] + 0.5 * db[t]
        assert float((d - want).norm() / want.norm()) < 1e-5
        assert full.modules[t][2] == pytest.approx(1.0)
    low = merge_loras([(str(a), 1.0), (str(b), 0.5)], tmp_path / "l.safetensors", mode="svd", rule=RankRule(rank=3),
                      base=base)
    merged, lora = _deltas(tmp_path / "l.safetensors", tree)
    for t, d in merged.items():
        want = da[t] + 0.5 * db[t]
        assert float(d.norm() / want.norm()) == pytest.approx(low.modules[t][2], rel=1e-4)
    assert {m.rank for m in lora.modules.values()} == {3}


def test_cloneofsimo_interpolation(pair, tmp_path):
    tree, a, b, base = pair
    merge_loras([(str(a), 1.0), (str(b), 1.0)], tmp_path / "i.safetensors", mode="interpolate", alpha=0.3, base=base)
    la, lb = load_bound(a, tree), load_bound(b, tree)
    merged, _ = _deltas(tmp_path / "i.safetensors", tree)
    ma, mb = la.by_target(), lb.by_target()
    for t, d in merged.items():
        up = 0.3 * ma[t].scale * ma[t].tensors["lora_up.weight"] + 0.7 * mb[t].scale * mb[t].tensors["lora_up.weight"]
        down = 0.3 * ma[t].tensors["lora_down.weight"] + 0.7 * mb[t].tensors["lora_down.weight"]
        want = (up.flatten(1) @ down.flatten(1)).reshape(d.shape)  # (αA₁ + (1−α)A₂)(αB₁ + (1−α)B₂)ᵀ
        torch.testing.assert_close(d, want, rtol=1e-5, atol=1e-7)


def test_concat_refuses_loha(tmp_path):
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    loha = {f"{name}.hada_w1_a": torch.randn(320, 2), f"{name}.hada_w1_b": torch.randn(2, 320),
            f"{name}.hada_w2_a": torch.randn(320, 2), f"{name}.hada_w2_b": torch.randn(2, 320),
            f"{name}.alpha": torch.tensor(1.0)}
    lora = {f"{name}.lora_up.weight": torch.randn(320, 2), f"{name}.lora_down.weight": torch.randn(2, 320)}
    save_file(loha, tmp_path / "loha.safetensors")
    save_file(lora, tmp_path / "lora.safetensors")
    files = [(str(tmp_path / "loha.safetensors"), 1.0), (str(tmp_path / "lora.safetensors"), 1.0)]
    with pytest.raises(UnsupportedError, match="LoHa: use --mode svd"):
        merge_loras(files, tmp_path / "o.safetensors", mode="concat")
    result = merge_loras(files, tmp_path / "o.safetensors", mode="svd", rule=RankRule(rank=4))  # full-size SD 1.5 names
    assert len(result.modules) == 1
