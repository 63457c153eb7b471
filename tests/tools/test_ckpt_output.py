"""A whole model is written as a pickle `.ckpt` only with --write-ckpt (convert, merge into-model, merge
checkpoints): without it a clear error suggests `.safetensors` before any work is done; with it the file is A1111's
`{"state_dict": ...}` holding the same tensors as the `.safetensors` output, written atomically."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from loraforge.cli import main
from loraforge.errors import PickleRefusedError
from loraforge.tools.convert import convert
from loraforge.tools.merge import merge_checkpoints


def _ckpt(path) -> dict:
    data = torch.load(str(path), map_location="cpu", weights_only=True)
    assert set(data) == {"state_dict"}
    return data["state_dict"]


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_convert_and_merge_write_ckpt_only_when_asked(tiny_dirs, tmp_path):
    folder = tiny_dirs["sd15"]
    with pytest.raises(PickleRefusedError, match=r"model\.safetensors instead.*--write-ckpt"):
        convert(folder, tmp_path / "model.ckpt")
    single = convert(folder, tmp_path / "model.safetensors").output
    assert list(tmp_path.iterdir()) == [single]

    ckpt = convert(folder, tmp_path / "model.ckpt", write_ckpt=True).output
    _same(_ckpt(ckpt), load_file(single))
    with pytest.raises(PickleRefusedError, match="--write-ckpt"):  # single file -> .ckpt: the same rule
        convert(single, tmp_path / "again.ckpt")
    _same(_ckpt(convert(single, tmp_path / "again.ckpt", write_ckpt=True).output), load_file(single))

    with pytest.raises(PickleRefusedError, match="--write-ckpt"):
        merge_checkpoints(str(single), str(single), tmp_path / "merged.ckpt")
    merged = merge_checkpoints(str(single), str(single), tmp_path / "merged.ckpt", multiplier=0.5, write_ckpt=True)
    _same(_ckpt(merged), load_file(single))  # 0.5·A + 0.5·A = A


def test_ckpt_is_written_atomically(tmp_path, monkeypatch):
    small = {"model.diffusion_model.x.weight": torch.ones(2, 2)}
    save_file(small, str(tmp_path / "a.safetensors"))

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        convert(tmp_path / "a.safetensors", tmp_path / "a.ckpt", write_ckpt=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_merge_into_model_cli_flag(tiny_dirs, tmp_path, capsys):
    down, up = torch.randn(1, 64), torch.randn(64, 1)
    name = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(1.0)},
              str(tmp_path / "lora.safetensors"))
    base = ["merge", "into-model", str(tiny_dirs["sd15"]), "--lora", str(tmp_path / "lora.safetensors")]
    code = main(base + ["-o", str(tmp_path / "m.ckpt")])
    err = capsys.readouterr().err
    assert code == 2 and "m.safetensors instead" in err and "--write-ckpt" in err and "Traceback" not in err
    assert not (tmp_path / "m.ckpt").exists()
    assert main(base + ["-o", str(tmp_path / "m.safetensors")]) == 0
    assert main(base + ["-o", str(tmp_path / "m.ckpt"), "--write-ckpt"]) == 0
    single, ckpt = load_file(tmp_path / "m.safetensors"), _ckpt(tmp_path / "m.ckpt")
    _same(ckpt, single)
    key = "model.diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.weight"
    base_weight = load_file(tiny_dirs["sd15"] / "unet" / "diffusion_pytorch_model.safetensors")[
        "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight"]
    torch.testing.assert_close(ckpt[key], base_weight + up @ down)  # the LoRA is baked into the pickle too
