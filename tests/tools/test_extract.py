"""extract: a LoRA from a merged model recovers the ΔW (UNet and text encoders); quality rules; errors."""

from __future__ import annotations

import pytest

from loraforge.formats.lora_file import ModelTree, load_bound
from loraforge.adapters import module_delta
from loraforge.tools.common import LoraSpec, load_sd_model
from loraforge.errors import FamilyMismatchError, ToolError
from loraforge.tools.extract import extract_lora
from loraforge.tools.merge import merge_into_model
from loraforge.tools.svd import RankRule


@pytest.mark.parametrize("family", ["sdxl"])
def test_extract_from_merged_model_recovers_delta(trained, tmp_path, family):
    t = trained[family]
    merged = merge_into_model(str(t.model_dir), [LoraSpec(str(t.kohya))], tmp_path / "merged")
    base, tuned = load_sd_model(str(t.model_dir)), load_sd_model(str(merged))
    result = extract_lora(base, tuned, tmp_path / "x.safetensors", RankRule(rank=4))
    tree = ModelTree.from_folder(t.model_dir)
    want = {k: module_delta(m, tree.shape(*k)) for k, m in load_bound(t.kohya, tree).by_target().items()}
    # SDXL reads the penultimate layer of text encoder 1: the LoRA of its last layer never trains (ΔW = 0)
    want = {k: d for k, d in want.items() if d.abs().max() > 0}
    got = {k: module_delta(m, tree.shape(*k)) for k, m in load_bound(tmp_path / "x.safetensors", tree).by_target().items()}
    assert got.keys() == want.keys()
    assert {p for p, _ in got} == {"unet", "te1", "te2"}
    for key, d in want.items():
        assert float((got[key] - d).norm() / d.norm()) < 1e-3, key
    assert all(share > 0.9999 for _, share in result.modules.values())
    assert "extracted" in "\n".join(result.lines())

    # a quality rule: the smallest rank keeping 90 % of ‖ΔW‖_F, UNet only
    low = extract_lora(base, tuned, tmp_path / "q.safetensors", RankRule(method="sv_fro", param=0.9),
                       text_encoders=False)
    assert {p for p, _ in low.modules} == {"unet"}
    assert all(share >= 0.9 - 1e-9 for _, share in low.modules.values())
    assert min(k for k, _ in low.modules.values()) < 4


def test_extract_errors(trained, tmp_path):
    sd15 = load_sd_model(str(trained["sd15"].model_dir))
    with pytest.raises(ToolError, match="does not differ"):
        extract_lora(sd15, sd15, tmp_path / "x.safetensors", RankRule(rank=4))
    with pytest.raises(FamilyMismatchError):
        extract_lora(sd15, str(trained["sdxl"].model_dir), tmp_path / "x.safetensors", RankRule(rank=4))
    with pytest.raises(ToolError, match="give a rank"):
        extract_lora(sd15, sd15, tmp_path / "x.safetensors", RankRule())
