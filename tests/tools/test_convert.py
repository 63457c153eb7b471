"""convert: every round trip is bit-exact (kohya <-> diffusers LoRA, single file <-> diffusers folder, embeddings
.pt <-> safetensors), pickles only with allow_pickle, and the converted files load where they should."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from loraforge.tools.convert import convert
from loraforge.errors import PickleRefusedError


def _read(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_lora_kohya_diffusers_round_trips(trained, tmp_path, family):
    t = trained[family]
    base = str(t.model_dir)
    # kohya -> diffusers -> kohya
    d = convert(t.kohya, tmp_path / "d", base=base).output
    assert d.name == "pytorch_lora_weights.safetensors"
    k = convert(d, tmp_path / "k.safetensors", base=base).output
    (sd0, meta0), (sd1, meta1) = _read(t.kohya), _read(k)
    _same(sd0, sd1)
    assert meta1 == meta0  # the training metadata travels through the diffusers file
    # diffusers (the trainer's own) -> kohya -> diffusers
    k2 = convert(t.diffusers, tmp_path / "k2.safetensors", base=base).output
    _same(_read(k2)[0], sd0)  # the trainer's two files hold the same LoRA
    d2 = convert(k2, tmp_path / "d2.safetensors", base=base).output
    _same(_read(d2)[0], _read(t.diffusers)[0])
    if family == "sd15":  # the converted diffusers file loads in diffusers like the kohya file
        from loraforge.tools.common import load_sd_model

        outs = []
        for path in (t.kohya, d):
            model = load_sd_model(base)
            model.pipeline().load_lora_weights(str(path))
            sample = torch.zeros(1, 4, 8, 8)
            cond = torch.ones(1, 77, model.unet.config.cross_attention_dim)
            with torch.no_grad():
                outs.append(model.unet(sample, torch.tensor([10]), cond).sample)
        assert torch.equal(outs[0], outs[1])


def test_lora_ldm_naming(trained, tmp_path):
    t = trained["sd15"]
    out = convert(t.kohya, tmp_path / "ldm.safetensors", to="kohya", naming="ldm", base=str(t.model_dir)).output
    keys = list(_read(out)[0])
    assert any(k.startswith("lora_unet_input_blocks_1_1_") for k in keys)
    back = convert(out, tmp_path / "back.safetensors", to="kohya", naming="auto", base=str(t.model_dir)).output
    _same(_read(back)[0], _read(t.kohya)[0])


def test_checkpoint_single_file_folder_round_trip(trained, tmp_path):
    t = trained["sdxl"]
    single = convert(t.model_dir, tmp_path / "model.safetensors").output
    folder = convert(single, tmp_path / "folder", config_dir=str(t.model_dir)).output
    again = convert(folder, tmp_path / "again.safetensors").output
    _same(load_file(single), load_file(again))
    for weights in sorted(t.model_dir.glob("*/*.safetensors")):  # the folder holds the original weights
        original = load_file(weights)
        again = load_file(folder / weights.parent.name / weights.name)
        _same({k: v for k, v in again.items() if k in original}, original)
        assert set(original) - set(again) <= {"text_model.embeddings.position_ids"}


def test_pickles_need_allow_pickle_and_convert_exactly(tmp_path):
    shared = torch.randn(4, 4)
    state = {"a.weight": torch.randn(3, 2).half(), "b.weight": shared, "tied.weight": shared,
             "nested": {"c": torch.arange(5)}}
    torch.save(state, tmp_path / "pytorch_lora_weights.bin")
    with pytest.raises(PickleRefusedError, match="--allow-pickle"):
        convert(tmp_path / "pytorch_lora_weights.bin", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
    convert(tmp_path / "pytorch_lora_weights.bin", tmp_path / "out.safetensors", allow_pickle=True)
    _same(load_file(tmp_path / "out.safetensors"),
          {"a.weight": state["a.weight"], "b.weight": shared, "tied.weight": shared, "nested.c": torch.arange(5)})

    ckpt = {"state_dict": {"model.diffusion_model.x": torch.ones(2)}, "global_step": 10}
    torch.save(ckpt, tmp_path / "model.ckpt")
    result = convert(tmp_path / "model.ckpt", tmp_path / "model.safetensors", allow_pickle=True)
    _same(load_file(tmp_path / "model.safetensors"), ckpt["state_dict"])

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"x": Evil()}, tmp_path / "evil.pkl")
    with pytest.raises(Exception, match="weights_only"):
        convert(tmp_path / "evil.pkl", tmp_path / "evil.safetensors", allow_pickle=True)
    assert result.output.exists()


def test_embedding_pt_safetensors_round_trip(tmp_path):
    vectors = torch.randn(3, 768)
    a1111 = {"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": "sks", "step": 120,
             "sd_checkpoint": None, "sd_checkpoint_name": None}
    torch.save(a1111, tmp_path / "sks.pt")
    st = convert(tmp_path / "sks.pt", tmp_path / "sks.safetensors", allow_pickle=True).output
    sd, meta = _read(st)
    _same(sd, {"emb_params": vectors})
    pt = convert(st, tmp_path / "again.pt").output
    back = torch.load(pt, weights_only=True)
    assert torch.equal(back["string_to_param"]["*"], vectors) and back["name"] == "sks" and back["step"] == 120
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert(st, tmp_path / "again.pt")
