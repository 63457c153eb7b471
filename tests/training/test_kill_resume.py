"""The kill test: a run SIGKILLed at random moments — during steps, while building the latent cache, in the middle of
a checkpoint save, of the last step's checkpoint and of the final LoRA write — and resumed each time with
`training.resume = "latest"` ends with the same tensors, bit for bit, as an uninterrupted run, and no temporary or
partial file survives the finished run.

The moments come from a seeded RNG (the seed is in every assertion message). A kill in the middle of a save uses the
test hook of `loraforge.utils.files.atomic_path` (LORAFORGE_TEST_PAUSE_AT): the process stops once the temporary of
the named target is written and before it is renamed, and is killed there.
"""

import hashlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time

from loraforge.config import dump_config

SEED = 20261201
STEPS = 10  # 8 images at batch 1: two epochs


def _tensor_digest(path) -> str:
    """SHA-256 of a .safetensors file's tensors (names, dtypes, shapes and bytes), without its metadata (which holds
    the session id and the times of each run)."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    return hashlib.sha256(json.dumps(header, sort_keys=True).encode() + raw[8 + n:]).hexdigest()


def _start(config, *sets, pause_at: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("LORAFORGE_TEST_PAUSE_AT", None)
    if pause_at:
        env["LORAFORGE_TEST_PAUSE_AT"] = pause_at
    args = [a for s in sets for a in ("--set", s)]
    return subprocess.Popen([sys.executable, "-m", "loraforge", "train", str(config), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, trigger: str, delay: float, where: str) -> str:
    """SIGKILL `proc` `delay` seconds after a stderr line holding `trigger`; return what it printed."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if trigger in line:
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    text = "".join(seen)
    assert proc.returncode == -signal.SIGKILL, f"{where}: not killed (rc {proc.returncode}):\n{text[-3000:]}"
    return text


def test_killed_runs_resume_to_the_same_weights(make_config, tmp_path):
    rng = random.Random(SEED)
    common = {"training.max_train_steps": STEPS, "training.save_every_n_steps": 2,
              "dataset.cache_latents": True, "dataset.cache_latents_to_disk": True}
    configs = {}
    for name in ("straight", "killed"):
        cfg = make_config("sd15", **common, **{"output.output_name": name,
                                                "dataset.cache_dir": str(tmp_path / "out" / name / "cache")})
        configs[name] = tmp_path / f"{name}.toml"
        configs[name].write_text(dump_config(cfg), encoding="utf-8")
    straight = _start(configs["straight"])  # the reference, alongside the killed chain
    run = tmp_path / "out" / "killed"
    latest = 'training.resume="latest"'
    ckpt_files = ["network.safetensors", "killed-step", "pytorch_lora_weights.safetensors", "config.toml",
                  "train_state.json", "manifest.json"]
    last_save = f"step-{STEPS:06d}.tmp-partial/"
    plan = [  # (what, extra --set, LORAFORGE_TEST_PAUSE_AT, trigger line, delay); latest stays below STEPS until 5
        ("during steps after the first checkpoint", [], None, "checkpoint: ", rng.uniform(0.0, 0.5)),
        ("building the latent cache", [latest], "/killed/cache/", "LORAFORGE_TEST_PAUSED", 0),
        ("saving the next checkpoint", [latest], f"tmp-partial/{rng.choice(ckpt_files)}", "LORAFORGE_TEST_PAUSED",
         0),
        ("during steps after a resume", [latest], None, "resumed from", rng.uniform(0.0, 0.8)),
        ("saving the last step's checkpoint", [latest], last_save + rng.choice(ckpt_files),
         "LORAFORGE_TEST_PAUSED", 0),
        ("writing the final LoRA", [latest],
         f"/killed/{rng.choice(['killed.safetensors', 'pytorch_lora_weights.safetensors'])}",
         "LORAFORGE_TEST_PAUSED", 0),
    ]
    log = [f"seed {SEED}"]
    for what, sets, pause_at, trigger, delay in plan:
        where = f"{log[0]}, kill {len(log)} ({what}, pause at {pause_at}, delay {delay:.2f} s)"
        if pause_at and "/cache/" in pause_at:
            shutil.rmtree(run / "cache")  # the cache is rebuilt by this start
        text = _kill_when(_start(configs["killed"], *sets, pause_at=pause_at), trigger, delay, where)
        if pause_at:  # killed in the middle of a save: its temporary is there
            tmp = text.split("LORAFORGE_TEST_PAUSED ")[1].split("\n")[0]
            assert os.path.exists(tmp), where
        found = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
        log.append(f"{what}: checkpoints {found}")
    final = _start(configs["killed"], latest)
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, f"{log}\n{err[-3000:]}"
    _, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err[-3000:]

    for name in ("killed.safetensors", "pytorch_lora_weights.safetensors"):
        ref = name.replace("killed", "straight")
        assert _tensor_digest(run / name) == _tensor_digest(tmp_path / "out" / "straight" / ref), (name, log)
    last = f"checkpoints/step-{STEPS:06d}/network.safetensors"
    assert (run / last).read_bytes() == (tmp_path / "out" / "straight" / last).read_bytes(), log
    leftovers = sorted(str(p.relative_to(run)) for p in run.rglob(".*"))
    assert leftovers == [], (leftovers, log)
