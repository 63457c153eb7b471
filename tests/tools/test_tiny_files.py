"""Files made from the embedded tiny models work with every tool without naming the model: the family and the tiny
architecture are read from the file (`loraforge_base_model` metadata, else the tiny models' widths)."""

from __future__ import annotations

import re

import pytest
from safetensors.torch import load_file, save_file

from loraforge.cli import main


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _strip_metadata(src, dst):
    save_file(load_file(str(src)), str(dst))
    return dst


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_check_and_inspect_find_the_tiny_architecture(trained, tmp_path, capsys, family):
    t = trained[family]
    bare = _strip_metadata(t.kohya, tmp_path / "bare.safetensors")  # older files: detected by the widths
    for path, evidence in ((t.kohya, "metadata loraforge_base_model = tiny-"), (bare, "cross-attention input width")):
        code, out, err = _run(capsys, "check", path)
        assert code == 0, err
        n = re.search(r"ComfyUI (\d+)/(\d+) modules, A1111 (\d+)/(\d+)", out).groups()
        assert n[0] == n[1] == n[2] == n[3] and int(n[0]) > 0, out
        assert f"family: {family} ({evidence}" in out and "checked against the embedded tiny model" in out
        code, out, _ = _run(capsys, "inspect", path)
        assert code == 0 and f"check: ComfyUI {n[0]}/{n[0]} modules" in out, out


def test_merge_loras_and_convert_resolve_against_the_tiny_model(trained, tmp_path, capsys):
    t = trained["sd15"]
    code, out, err = _run(capsys, "merge", "loras", t.kohya, f"{t.diffusers}:0.5", "-o", tmp_path / "m.safetensors")
    assert code == 0 and "concat: 56 modules" in out, err
    code, out, err = _run(capsys, "convert", t.diffusers, tmp_path / "k.safetensors")
    assert code == 0 and "diffusers LoRA -> kohya LoRA (56 modules)" in out, err
    code, out, _ = _run(capsys, "check", tmp_path / "k.safetensors")
    assert code == 0 and "ComfyUI 56/56 modules, A1111 56/56" in out, out


def test_convert_pickled_lora_honours_to(trained, tmp_path, capsys):
    import torch

    t = trained["sd15"]
    torch.save(load_file(str(t.diffusers)), tmp_path / "pytorch_lora_weights.bin")
    code, out, err = _run(capsys, "convert", tmp_path / "pytorch_lora_weights.bin", tmp_path / "k.safetensors",
                          "--to", "kohya", "--allow-pickle")
    assert code == 0 and "diffusers LoRA -> kohya LoRA (56 modules)" in out, err
    got, want = load_file(str(tmp_path / "k.safetensors")), load_file(str(t.kohya))
    # the same kohya keys and factors (the pickle lost the alphas, which diffusers keeps in the header)
    want = {k: v for k, v in want.items() if not k.endswith(".alpha")}
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    # without --to a pickle keeps its keys (pickle -> safetensors only)
    code, out, _ = _run(capsys, "convert", tmp_path / "pytorch_lora_weights.bin", tmp_path / "same.safetensors",
                        "--allow-pickle")
    assert code == 0 and load_file(str(tmp_path / "same.safetensors")).keys() == load_file(str(t.diffusers)).keys()


@pytest.mark.parametrize("family", ["sd15", "sd2"])  # sd2: diffusers' own probe takes the tiny file for SD 1.x
def test_a_tiny_single_file_loads_without_config_dir(tiny_dirs, tmp_path, capsys, family):
    import torch

    from loraforge.tools.common import load_sd_model

    single = tmp_path / f"{family}.safetensors"
    code, _, err = _run(capsys, "convert", tiny_dirs[family], single)
    assert code == 0, err
    bare = _strip_metadata(single, tmp_path / "bare.safetensors")  # found by its shapes, not by metadata
    code, out, err = _run(capsys, "convert", bare, tmp_path / "folder")
    assert code == 0 and f"({'SD 2.x' if family == 'sd2' else 'SD 1.x'})" in out, err
    want, got = load_sd_model(str(tiny_dirs[family])), load_sd_model(str(tmp_path / "folder"))
    for a, b in ((want.unet, got.unet), (want.text_encoders[0], got.text_encoders[0]), (want.vae, got.vae)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    code, out, err = _run(capsys, "sample", "--model", single, "--prompt", "a robot", "--steps", "1",
                          "-o", tmp_path / "png")
    assert code == 0 and out.strip().endswith("00000-0.png"), err
