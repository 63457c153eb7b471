"""scripts/pretrain_toy.py: the phases run in resumable chunks, and the export is what `model = "toy"` loads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--vae-batch", "2", "--scenes", "16", "--batch", "2", "--save-every", "1", "--minutes", "10", "--chunk-steps", "2"]


def _script():
    spec = importlib.util.spec_from_file_location("pretrain_toy", ROOT / "scripts" / "pretrain_toy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chunks_resume_and_the_export_loads_as_the_toy_model(tmp_path, monkeypatch):
    script, work = _script(), tmp_path / "work"
    script.main(["--work", str(work), "--vae-steps", "2", "--unet-steps", "3", *TINY])  # the VAE phase only
    assert json.loads((work / "state.json").read_text())["unet_step"] == 0
    script.main(["--work", str(work), "--vae-steps", "2", "--unet-steps", "3", *TINY])  # 2 UNet steps
    state = json.loads((work / "state.json").read_text())
    assert (state["vae_step"], state["unet_step"], state["latents_vae_step"]) == (2, 2, 2)
    assert state["scaling_factor"] > 0 and {"vae@cpu", "latents@cpu", "unet@cpu"} <= set(state["seconds"])
    vae_before, unet_before = load_file(str(work / "vae.safetensors")), load_file(str(work / "unet.safetensors"))

    script.main(["--work", str(work), "--vae-steps", "2", "--unet-steps", "3", *TINY])  # the next chunk
    state = json.loads((work / "state.json").read_text())
    assert (state["vae_step"], state["unet_step"]) == (2, 3)
    vae_after, unet_after = load_file(str(work / "vae.safetensors")), load_file(str(work / "unet.safetensors"))
    assert all((vae_before[k] == vae_after[k]).all() for k in vae_before)  # the finished phase is not redone
    assert any((unet_before[k] != unet_after[k]).any() for k in unet_before)
    # the same 3 UNet steps in one chunk: resuming continues the same run (weights, AdamW state, schedule, data),
    # equal up to float rounding (≤ 1e-6; measured 7e-9); a fresh start instead of a resume differs by orders more
    whole = tmp_path / "whole"
    script.main(["--work", str(whole), "--vae-steps", "2", "--unet-steps", "3", *TINY[:-2]])
    unet_whole = load_file(str(whole / "unet.safetensors"))
    assert max((unet_whole[k] - unet_after[k]).abs().max().item() for k in unet_whole) < 1e-6

    out = tmp_path / "assets"
    script.main(["--work", str(work), "--export", "--export-to", str(out)])
    report = json.loads((out / "toy-sd15.json").read_text())
    from loraforge.config.model import ModelConfig
    from loraforge.models import toy
    from loraforge.models.loading import load_model
    from loraforge.utils.files import file_sha256

    assert report["sha256"] == file_sha256(out / "toy-sd15.safetensors") and report["unet_step"] == 3
    monkeypatch.setattr(toy, "WEIGHTS", out / "toy-sd15.safetensors")
    monkeypatch.setattr(toy, "REPORT", out / "toy-sd15.json")
    monkeypatch.chdir(tmp_path)
    model = load_model(ModelConfig(pretrained_model_name_or_path="toy"))
    assert model.vae.config.scaling_factor == state["scaling_factor"] and model.native_size == 64
    exported = load_file(str(work / "unet.safetensors"))
    name = next(iter(exported))
    assert (dict(model.unet.state_dict())[name] == exported[name].half().float()).all()

    # without the latents cache (it is not carried to a GPU machine) the same VAE's latents are made again and the
    # UNet goes on
    (work / "latents.safetensors").unlink()
    script.main(["--work", str(work), "--vae-steps", "2", "--unet-steps", "4", *TINY])
    assert json.loads((work / "state.json").read_text())["unet_step"] == 4 and (work / "latents.safetensors").is_file()

    # a longer VAE after the UNet started: its latents are stale, so the UNet phase and the export refuse
    script.main(["--work", str(work), "--vae-steps", "3", "--unet-steps", "5", *TINY])
    for args in (["--vae-steps", "3", "--unet-steps", "5", *TINY], ["--export", "--export-to", str(out)]):
        with pytest.raises(SystemExit, match="VAE"):
            script.main(["--work", str(work), *args])
    assert json.loads((work / "state.json").read_text())["vae_step"] == 3
