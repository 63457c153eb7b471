"""The kill test: a run SIGKILLed at random moments — during steps, while building the latent cache, in the middle of
a checkpoint save, of the last step's checkpoint and of the final LoRA write — and resumed each time with
`training.resume = "latest"` ends with the same tensors, bit for bit, as an uninterrupted run, and no temporary or
partial file survives the finished run.

The moments come from a seeded RNG (the seed is in every assertion message). A kill in the middle of a save uses the
test hook of `loraforge.utils.files.atomic_path` (LORAFORGE_TEST_PAUSE_AT): the process stops once the temporary of
the named target is written and before it is renamed, and is killed there.

Each run is a `loraforge train` process forked from one driver process that imported torch, diffusers and loraforge
once (an import costs more than the whole tiny run), so the 8 runs fit in well under a minute of CPU.
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

DRIVER = r"""
import json, os, sys, traceback
import torch, accelerate, transformers, safetensors.torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
import loraforge.training.trainer, loraforge.formats.check, loraforge.data.cache, loraforge.sampling.run
from loraforge.cli import main
torch.set_num_threads(1)
for line in sys.stdin:  # {"args": [...], "env": {...}, "stderr": path} forks a run; {"wait": pid} reaps one
    job = json.loads(line)
    if "wait" in job:
        print(os.waitstatus_to_exitcode(os.waitpid(job["wait"], 0)[1]), flush=True)
        continue
    pid = os.fork()
    if pid == 0:
        os.environ.pop("LORAFORGE_TEST_PAUSE_AT", None)
        os.environ.update(job["env"])
        os.dup2(os.open(job["stderr"], os.O_WRONLY | os.O_CREAT), 2)
        os.dup2(os.open(os.devnull, os.O_RDWR), 1)
        os.dup2(1, 0)
        rc = 1
        try:
            rc = main(job["args"])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(rc)
    print(pid, flush=True)
"""
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


class Runs:
    """`loraforge train` runs forked from the driver; `start` returns the pid, `wait` the exit code (-9: killed)."""

    def __init__(self, folder):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        env.pop("LORAFORGE_TEST_PAUSE_AT", None)
        self.folder, self.n = folder, 0
        self.driver = subprocess.Popen([sys.executable, "-c", DRIVER], env=env, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)

    def _ask(self, job: dict) -> int:
        self.driver.stdin.write(json.dumps(job) + "\n")
        self.driver.stdin.flush()
        return int(self.driver.stdout.readline())

    def start(self, config, *sets, pause_at: str | None = None, fifo: bool = False) -> tuple[int, object]:
        """Start a run; its stderr is a FIFO to read live (`fifo`) or a file; returns (pid, the stderr path)."""
        self.n += 1
        err = self.folder / f"stderr-{self.n}"
        if fifo:
            os.mkfifo(err)
        args = ["train", str(config), *[a for s in sets for a in ("--set", s)]]
        env = {"LORAFORGE_TEST_PAUSE_AT": pause_at} if pause_at else {}
        return self._ask({"args": args, "env": env, "stderr": str(err)}), err

    def wait(self, pid: int) -> int:
        return self._ask({"wait": pid})

    def close(self) -> None:
        self.driver.stdin.close()
        self.driver.wait(timeout=60)


def _kill_when(runs: Runs, pid: int, err, trigger: str, delay: float, where: str) -> str:
    """SIGKILL run `pid` `delay` seconds after a stderr line holding `trigger`; return what it printed."""
    seen = []
    with open(err, encoding="utf-8", errors="replace") as f:
        for line in f:
            seen.append(line)
            if trigger in line:
                time.sleep(delay)
                os.kill(pid, signal.SIGKILL)
                break
        rc = runs.wait(pid)
        seen += f.read()
    text = "".join(seen)
    assert rc == -signal.SIGKILL, f"{where}: not killed (rc {rc}):\n{text[-3000:]}"
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
    runs = Runs(tmp_path)
    straight, straight_err = runs.start(configs["straight"])  # the reference, alongside the killed chain
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
        pid, err = runs.start(configs["killed"], *sets, pause_at=pause_at, fifo=True)
        text = _kill_when(runs, pid, err, trigger, delay, where)
        if pause_at:  # killed in the middle of a save: its temporary is there
            tmp = text.split("LORAFORGE_TEST_PAUSED ")[1].split("\n")[0]
            assert os.path.exists(tmp), where
        found = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
        log.append(f"{what}: checkpoints {found}")
    final, final_err = runs.start(configs["killed"], latest)
    assert runs.wait(final) == 0, f"{log}\n{final_err.read_text()[-3000:]}"
    assert runs.wait(straight) == 0, straight_err.read_text()[-3000:]
    runs.close()

    for name in ("killed.safetensors", "pytorch_lora_weights.safetensors"):
        ref = name.replace("killed", "straight")
        assert _tensor_digest(run / name) == _tensor_digest(tmp_path / "out" / "straight" / ref), (name, log)
    last = f"checkpoints/step-{STEPS:06d}/network.safetensors"
    assert (run / last).read_bytes() == (tmp_path / "out" / "straight" / last).read_bytes(), log
    leftovers = sorted(str(p.relative_to(run)) for p in run.rglob(".*"))
    assert leftovers == [], (leftovers, log)
    print("\n".join(log))  # the kill moments (pytest -s shows them)
