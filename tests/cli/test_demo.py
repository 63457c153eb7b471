"""`make demo` runs `loraforge demo`: `--tiny` trains both tiny models, and each writes its two LoRA files, passes the
consumer check and samples. Short here (2 steps, 1-step samples); in a process of its own, as `make demo` runs it.
(Without `--tiny` the demo starts with the pretrained toy model: the concept tests and the test below cover it.)"""

import re
import subprocess
import sys

from PIL import Image


def test_demo_writes_checked_lora_files_and_samples(tiny_dirs, tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "loraforge", "demo", "--tiny", "--steps", "2", "--sample-steps", "1", "--output-dir", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for family in ("sd15", "sdxl"):
        run = out / f"tiny-{family}"
        kohya, diffusers = run / f"tiny-{family}.safetensors", run / "pytorch_lora_weights.safetensors"
        assert kohya.is_file() and diffusers.is_file()
        assert f"done: 2 steps, run folder {run}" in proc.stdout
        assert f"AUTOMATIC1111 / ComfyUI: {kohya}" in proc.stdout and f"diffusers: {diffusers}" in proc.stdout
        # the consumer check of the written file, logged by the run: every module found by every consumer
        check = rf"check tiny-{family}\.safetensors: ComfyUI (\d+)/\1 modules, A1111 \1/\1, diffusers loads"
        assert re.search(check, proc.stderr), proc.stderr[-3000:]
        samples = [p for p in (run / "samples").glob("*.png") if "grid" not in p.name]
        assert len(samples) == 4 and all(Image.open(p).size == (64, 64) for p in samples)  # 2 prompts × 2 images
        assert "Steps: 1," in Image.open(samples[0]).text["parameters"]
    assert "demo finished" in proc.stdout
    assert "toy SD 1.5" not in proc.stdout  # --tiny: the tiny runs only


def test_with_the_toy_model_the_demo_teaches_it_a_concept_and_evaluates(random_toy, tmp_path, capsys):
    """With the toy model's weights installed, `demo` trains the concept LoRA on it and prints the evaluation, then
    the tiny SDXL run (random toy weights here: the plumbing, not what the pretrained model learns)."""
    import argparse

    from loraforge.cli.commands import cmd_demo

    args = argparse.Namespace(output_dir=str(tmp_path / "demo"), steps=2, sample_steps=1, concept_steps=2, tiny=False,
                              verbose=False)
    assert cmd_demo(args) == 0
    out = capsys.readouterr().out
    assert "toy SD 1.5 (pretrained on the toy world): teach it a heart called TOK, 2 steps" in out
    assert "concept score" in out and "the base model draws the heart in" in out
    assert (tmp_path / "demo" / "toy-heart" / "eval" / "eval-grid.png").is_file()
    assert (tmp_path / "demo" / "tiny-sdxl").is_dir() and not (tmp_path / "demo" / "tiny-sd15").exists()
