"""A LoRA file with NaN / Inf values (a diverged run's file) is reported by `check` (broken, exit 1) and `inspect`,
and refused, naming the file and the tensors, by every command that would apply or rewrite it."""

from __future__ import annotations

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from loraforge.cli import main


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def nan_file(trained, tmp_path):
    """The sd15 fixture file with one NaN in a UNet up factor and one Inf in a text-encoder down factor."""
    src = trained["sd15"].kohya
    sd = load_file(str(src))
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
    nan_key = next(k for k in sd if k.startswith("lora_unet_") and k.endswith("lora_up.weight"))
    inf_key = next(k for k in sd if k.startswith("lora_te_") and k.endswith("lora_down.weight"))
    sd[nan_key][0, 0] = float("nan")
    sd[inf_key][1, 1] = float("inf")
    path = tmp_path / "diverged.safetensors"
    save_file(sd, str(path), metadata=meta)
    return path, nan_key, inf_key


def test_check_and_inspect_report_nan_files(trained, nan_file, capsys):
    path, nan_key, inf_key = nan_file
    model = trained["sd15"].model_dir
    code, out, _ = _run(capsys, "check", trained["sd15"].kohya, "--model", model)
    assert code == 0 and "BROKEN" not in out  # the same file without the NaN passes
    code, out, _ = _run(capsys, "check", path, "--model", model)
    assert code == 1
    assert f"{path}: BROKEN: NaN/Inf values in 2 tensors; ComfyUI" in out
    assert "[non-finite] NaN or infinite values" in out and nan_key in out and inf_key in out

    code, out, _ = _run(capsys, "inspect", path)
    assert code == 0
    assert "values: BROKEN, 2 tensors hold NaN/Inf" in out
    assert f"{nan_key} (1 NaN of " in out and f"{inf_key} (1 Inf of " in out
    assert "check: BROKEN: NaN/Inf values in 2 tensors" in out
    _, out, _ = _run(capsys, "inspect", trained["sd15"].kohya)
    assert "values: all finite" in out


def test_merge_sample_resize_and_convert_refuse_nan_files(trained, nan_file, tmp_path, capsys):
    path, nan_key, _ = nan_file
    t = trained["sd15"]
    commands = {
        "merge into-model": ["merge", "into-model", t.model_dir, "--lora", path, "-o", tmp_path / "m.safetensors"],
        "merge loras": ["merge", "loras", t.kohya, path, "--base", t.model_dir, "-o", tmp_path / "l.safetensors"],
        "sample": ["sample", "--model", t.model_dir, "--prompt", "a robot", "--lora", path, "--steps", "1",
                   "--width", "64", "--height", "64", "-o", tmp_path / "png"],
        "resize": ["resize", path, "--rank", "2", "-o", tmp_path / "r.safetensors"],
        "convert": ["convert", path, tmp_path / "c"],
    }
    for name, argv in commands.items():
        code, _, err = _run(capsys, *argv)
        assert code == 2, (name, err)
        assert f"{path}: 2 tensors hold NaN or infinite values" in err and nan_key in err, (name, err)
        assert "Traceback" not in err
    assert not [p for p in tmp_path.iterdir() if p.name != path.name]  # nothing written
