"""Several processes through accelerate (the engine that runs several GPUs), here as two CPU processes with gloo:
one console voice, every process's state in the checkpoint, one set of output files, and the same training as one
process with the batch doubled."""

import os
import subprocess
import sys

import torch
from PIL import Image
from safetensors.torch import load_file

from loraforge.config import load_config
from loraforge.training.trainer import Trainer


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "loraforge", "train", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_two_process_run_with_torchrun(tmp_path, tiny_dirs):
    proc = _torchrun([
        "--set", "model.family=sdxl", "--set", f"output.output_dir={str(tmp_path)!r}",
        "--set", "training.max_train_steps=4", "--set", "network.rank=4", "--set", "output.log_with=none",
        "--set", "training.save_every_n_steps=2", "--set", "sampling.at_end=false",
        # aspect buckets: batches of varying sizes must reach each process whole
        "--set", "dataset.enable_bucket=true", "--set", "dataset.resolution=128",
        "--set", "dataset.bucket_reso_steps=32", "--set", "training.batch_size=2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("× 2 process(es)") == 1, proc.stderr[-3000:]  # only the main process logs
    assert proc.stdout.count("done: 4 steps") == 1
    run = tmp_path / "lora"
    ckpt = run / "checkpoints" / "step-000002"
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    sd = load_file(str(run / "lora.safetensors"))
    assert any(k.endswith("lora_up.weight") for k in sd) and (run / "config.toml").is_file()


def test_two_processes_train_as_one_process_with_twice_the_batch(tmp_path, tiny_dirs):
    """4 images, so that every step sees all of them (2 processes × batch 2, or 1 process × batch 4: the same data
    in every step), 4 steps with a 3-step warm-up. Each sample's noise and timestep come from the sample (not the
    process), and DDP averages the two half-batch gradients, so the LoRA weights are equal up to float summation
    order: within 1e-5 absolute (the weights move by about 1e-3 here; a warm-up counted in the wrong steps moves
    them by about 1e-4 more)."""
    images = tmp_path / "img"
    images.mkdir()
    for i in range(4):
        Image.new("RGB", (64, 64), (60 * i, 200 - 40 * i, 90)).save(images / f"{i}.png")
    common = {"model.family": "'sd15'", "dataset.instance_dir": repr(str(images)),
              "dataset.instance_prompt": "'a photo of sks robot'", "training.max_train_steps": "4",
              "optimizer.lr_scheduler": "'constant_with_warmup'", "optimizer.lr_warmup_steps": "3",
              "optimizer.learning_rate": "1e-3", "network.rank": "4", "output.log_with": "'none'",
              "sampling.at_end": "false"}

    def overrides(name: str, batch: int) -> list[str]:
        values = common | {"output.output_dir": repr(str(tmp_path)), "output.output_name": repr(name),
                           "training.batch_size": str(batch)}
        return [f"{k}={v}" for k, v in values.items()]

    proc = _torchrun([arg for o in overrides("two", 2) for arg in ("--set", o)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training 4 steps (1 per epoch, 4 epochs), batch 2 × accumulation 1 × 2 process(es)" in proc.stderr
    one = Trainer(load_config(None, overrides("one", 4))).run()
    assert one.steps == 4
    two = load_file(str(tmp_path / "two" / "two.safetensors"))
    ref = load_file(str(one.files.kohya))
    assert two.keys() == ref.keys()
    moved = max((ref[k] - 0).abs().max().item() for k in ref if "lora_up" in k)
    assert moved > 1e-4  # the LoRA did train
    for k in ref:
        torch.testing.assert_close(two[k], ref[k], rtol=0, atol=1e-5, msg=k)
