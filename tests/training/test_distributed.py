"""Several processes through accelerate (the engine that runs several GPUs), here as two CPU processes with gloo:
one console voice, every process's state in the checkpoint, one set of output files."""

import os
import subprocess
import sys

from safetensors.torch import load_file


def test_two_process_run_with_torchrun(tmp_path, tiny_dirs):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "loraforge", "train",
           "--set", "model.family=sdxl", "--set", f"output.output_dir={str(tmp_path)!r}",
           "--set", "training.max_train_steps=4", "--set", "network.rank=4", "--set", "output.log_with=none",
           "--set", "training.save_every_n_steps=2", "--set", "sampling.at_end=false",
           # aspect buckets: batches of varying sizes must reach each process whole
           "--set", "dataset.enable_bucket=true", "--set", "dataset.resolution=128",
           "--set", "dataset.bucket_reso_steps=32", "--set", "training.batch_size=2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("× 2 process(es)") == 1, proc.stderr[-3000:]  # only the main process logs
    assert proc.stdout.count("done: 4 steps") == 1
    run = tmp_path / "lora"
    ckpt = run / "checkpoints" / "step-000002"
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    sd = load_file(str(run / "lora.safetensors"))
    assert any(k.endswith("lora_up.weight") for k in sd) and (run / "config.toml").is_file()
