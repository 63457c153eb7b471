"""The tools from the command line: inspect output, user errors printed without a traceback (exit code 2), outputs
never overwritten without --overwrite."""

from __future__ import annotations

import torch
from PIL import Image

from loraforge.cli import main
from loraforge.formats.lora_file import ModelTree, load_bound
from loraforge.adapters import module_delta


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_lora_embedding_folder_and_pickle(trained, tmp_path, capsys):
    t = trained["sd15"]
    code, out, _ = _run(capsys, "inspect", t.kohya)
    assert code == 0
    for line in ("kind: LoRA-family file, kohya layout", "algo: LoRA (56)", "ranks: 4 (56)", "alphas: 2 (56)",
                 "modules: UNet 48, text encoder 1 8", "unused keys: none", "check: ComfyUI ",
                 "  ss_network_dim: 4", "  ss_network_alpha: 2"):
        assert line in out, line
    code, out, _ = _run(capsys, "inspect", trained["sdxl"].diffusers)
    assert "diffusers layout" in out and "family: sdxl (cross-attention input width 96 of the embedded tiny model" in out and "text encoder 2" in out
    assert "lora_adapter_metadata: text_encoder.lora_alpha=2.0" in out

    from loraforge.formats.embeddings import save_embeddings

    emb = save_embeddings(tmp_path / "emb.safetensors", "sd15", [torch.randn(3, 768)])
    torch.save({"x": torch.ones(1)}, tmp_path / "weights.bin")
    code, out, _ = _run(capsys, "inspect", emb, t.model_dir, tmp_path / "weights.bin")
    assert "kind: textual-inversion embedding (SD 1.x)" in out and "emb_params 3 vectors × 768" in out
    assert "kind: diffusers model folder" in out and "family: sd15" in out and "unet: " in out
    assert "pickle-based file, not opened" in out


def test_resize_cli_and_overwrite_refusal(trained, tmp_path, capsys):
    out_file = tmp_path / "small.safetensors"
    code, out, _ = _run(capsys, "resize", trained["sd15"].kohya, "-o", out_file, "--sv-fro", "0.9", "--rank", "3")
    assert code == 0 and "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in out and "Frobenius kept" in out
    before = out_file.read_bytes()
    code, _, err = _run(capsys, "resize", trained["sd15"].kohya, "-o", out_file, "--rank", "1")
    assert code == 2 and "already exists; pass --overwrite" in err and "Traceback" not in err
    assert out_file.read_bytes() == before
    code, _, _ = _run(capsys, "resize", trained["sd15"].kohya, "-o", out_file, "--rank", "1", "--overwrite")
    assert code == 0 and out_file.read_bytes() != before
    assert not list(tmp_path.glob(".small*"))  # atomic writes leave no temporary files


def test_user_errors_are_one_line(trained, tmp_path, capsys):
    sd15, sdxl = trained["sd15"], trained["sdxl"]
    code, _, err = _run(capsys, "merge", "loras", sd15.kohya, sdxl.kohya, "-o", tmp_path / "m.safetensors")
    # each file says which (tiny) model it was trained on
    assert code == 2 and "the LoRA files are for different families" in err and "Traceback" not in err
    assert "lora-sd15.safetensors (sd15)" in err and "lora-sdxl.safetensors (sdxl)" in err
    code, _, err = _run(capsys, "merge", "into-model", sd15.model_dir, "--lora", sdxl.kohya, "-o", tmp_path / "x")
    assert code == 2 and "SDXL LoRA" in err and "the model is SD 1.x" in err
    torch.save({"x": torch.ones(1)}, tmp_path / "w.bin")
    code, _, err = _run(capsys, "convert", tmp_path / "w.bin", tmp_path / "w.safetensors")
    assert code == 2 and "--allow-pickle" in err
    code, _, err = _run(capsys, "resize", sd15.kohya, "-o", tmp_path / "r.safetensors", "--recipe", "fro_ckpt=1")
    assert code == 2 and "threshold" in err
    assert not (tmp_path / "m.safetensors").exists() and not (tmp_path / "x").exists()


def test_sample_and_merge_cli(trained, tmp_path, capsys):
    t = trained["sd15"]
    code, out, _ = _run(capsys, "sample", "--model", t.model_dir, "--prompt", "a robot", "--lora", f"{t.kohya}:0.5",
                        "--steps", "1", "--batch", "2", "--seed", "4", "--width", "64", "--height", "64",
                        "-o", tmp_path / "png")
    assert code == 0 and out.split() == [str(tmp_path / "png" / "00000-4.png"), str(tmp_path / "png" / "00001-5.png")]
    params = Image.open(tmp_path / "png" / "00001-5.png").text["parameters"]
    assert params.startswith("a robot <lora:lora-sd15:0.5>\n") and "Steps: 1," in params and "Seed: 5," in params
    code, out, _ = _run(capsys, "merge", "loras", t.kohya, f"{t.kohya}:-1", "--mode", "svd", "--rank", "2",
                        "--base", t.model_dir, "-o", tmp_path / "zero.safetensors")
    assert code == 0 and "svd: 56 modules" in out
    # t + (-1)·t: every module of the written file is ~0, where t's own are not
    tree = ModelTree.from_folder(t.model_dir)
    source = {target: module_delta(m, tree.shape(*target)) for target, m in load_bound(t.kohya, tree).by_target().items()}
    merged = load_bound(tmp_path / "zero.safetensors", tree).by_target()
    assert merged.keys() == source.keys()
    for target, m in merged.items():
        assert module_delta(m, tree.shape(*target)).abs().max() <= 1e-6 * source[target].abs().max(), target
