"""The web UI's job queue: each run is `python -m loraforge train CONFIG.toml` in a process of its own.

A job lives in `<state dir>/jobs/<id>/`: `job.json` (its record, written atomically), `config.toml` (the resolved
config, as `loraforge train` reads it), `console.log` (the process's output) and the run folder
`run/<output.output_name>/` (the UI sets `output.output_dir` to `run/`, so every job has its own). The records are
the queue's only state: a new UI process (a restart) reads them back and finds a still-running process by its pid.
One run at a time; the others wait as `queued`, oldest first. Runs are started in their own session, so stopping
the UI (Ctrl-C) leaves them running. Stop = SIGINT to the run's process: the trainer writes a checkpoint and exits;
resume = the same config with `--set training.resume=latest`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import TrainConfig, dump_config, load_config
from ..errors import LoraforgeError, PathNotAllowedError
from ..training.metrics import read_metrics
from ..training.state import complete_checkpoints
from ..utils.files import write_text_atomic

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
CONFIG_FILE = "config.toml"
CONSOLE_FILE = "console.log"
RUN_PARENT = "run"  # the jobs's output.output_dir, inside its folder
ACTIVE = ("running", "stopping")
FINISHED = ("done", "stopped", "failed", "cancelled")

# The config's paths (read or written by the run): each must lie under the UI's folders.
PATH_FIELDS = [
    ("model", "pretrained_model_name_or_path"), ("model", "vae"), ("model", "config_dir"),
    ("dataset", "instance_dir"), ("dataset", "train_data_dir"), ("dataset", "reg_data_dir"),
    ("dataset", "config_file"), ("dataset", "dataset_name"), ("dataset", "class_data_dir"), ("dataset", "cache_dir"),
    ("sampling", "sample_prompts"), ("output", "logging_dir"),
]

HUB_FIELDS = {("model", "pretrained_model_name_or_path"), ("model", "vae"), ("dataset", "dataset_name")}
HUB_HINT = " (the UI downloads nothing: give a local folder or file, e.g. one `huggingface-cli download` wrote)"


class Roots:
    """The folders the UI may read and write: its state folder and the data roots it was started with."""

    def __init__(self, state_dir: Path, data_roots: list[Path]):
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.folders = [self.state_dir, *(Path(p).expanduser().resolve() for p in data_roots)]

    def check(self, path: str | Path, what: str, hint: str = "") -> Path:
        """`path` made absolute (relative to the current folder), or `PathNotAllowedError` when it is outside."""
        resolved = Path(path).expanduser().resolve()
        if any(resolved.is_relative_to(root) for root in self.folders):
            return resolved
        allowed = ", ".join(str(r) for r in self.folders)
        raise PathNotAllowedError(
            f"{what} = {str(path)!r}: outside the folders this UI may use ({allowed}); move it under one of them, or "
            f"restart `loraforge ui` with --data-root {resolved.parent}{hint}"
        )


@dataclass
class Job:
    id: str
    created: float
    overrides: list[str]  # the form's values, as `--set section.key=value` lines
    name: str = "lora"  # output.output_name
    status: str = "queued"  # queued | running | stopping | done | stopped | failed | cancelled
    pid: int | None = None
    returncode: int | None = None
    resume: bool = False  # the next start continues from the latest checkpoint
    message: str = ""
    started: float | None = None
    ended: float | None = None
    history: list[str] = field(default_factory=list)  # "started", "stopped at step 5", ...

    def folder(self, state_dir: Path) -> Path:
        return state_dir / "jobs" / self.id

    def run_dir(self, state_dir: Path) -> Path:
        return self.folder(state_dir) / RUN_PARENT / self.name


def resolve_config(overrides: list[str], roots: Roots, output_dir: Path | None = None) -> TrainConfig:
    """Validate the form's `--set` lines as `loraforge train --set ...` does (same `ConfigError` messages), check
    every path against the UI's folders, and return the config with absolute paths (and `output_dir`, if given)."""
    cfg = load_config(None, overrides)
    fixed = []
    for section, key in PATH_FIELDS:
        value = getattr(getattr(cfg, section), key)
        if value:
            hint = HUB_HINT if (section, key) in HUB_FIELDS else ""
            fixed.append(f"{section}.{key}={json.dumps(str(roots.check(value, f'{section}.{key}', hint)))}")
    for i, subset in enumerate(cfg.dataset.subsets):
        roots.check(subset.image_dir, f"dataset.subsets[{i}].image_dir")
    if output_dir is not None:
        fixed.append(f"output.output_dir={json.dumps(str(output_dir))}")
    return load_config(None, [*overrides, *fixed]) if fixed else cfg


def _sigint_default() -> None:  # runs in the child between fork and exec
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class JobQueue:
    def __init__(self, roots: Roots, python: str = sys.executable):
        self.roots = roots
        self.state_dir = roots.state_dir
        self.jobs_dir = self.state_dir / "jobs"
        self.python = python
        self._procs: dict[str, subprocess.Popen] = {}  # the processes this UI process started
        self._lock = threading.RLock()

    # ------------------------------------------------------------------------------------------------ records
    def _save(self, job: Job) -> None:
        write_text_atomic(job.folder(self.state_dir) / JOB_FILE, json.dumps(asdict(job), indent=1))

    def get(self, job_id: str) -> Job:
        path = self.jobs_dir / job_id / JOB_FILE
        if "/" in job_id or job_id.startswith(".") or not path.is_file():
            raise LoraforgeError(f"no job {job_id!r} in {self.jobs_dir}")
        return Job(**json.loads(path.read_text(encoding="utf-8")))

    def jobs(self) -> list[Job]:
        if not self.jobs_dir.is_dir():
            return []
        found = [self.get(p.parent.name) for p in self.jobs_dir.glob(f"*/{JOB_FILE}")]
        return sorted(found, key=lambda j: j.created)

    # ------------------------------------------------------------------------------------------------ actions
    def submit(self, overrides: list[str]) -> Job:
        """Validate and queue a run (a `ConfigError` / `PathNotAllowedError` for a bad config: nothing is queued)."""
        job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        job = Job(id=job_id, created=time.time(), overrides=list(overrides))
        folder = job.folder(self.state_dir)
        cfg = resolve_config(overrides, self.roots, folder / RUN_PARENT)
        job.name = cfg.output.output_name
        folder.mkdir(parents=True)
        write_text_atomic(folder / CONFIG_FILE, dump_config(cfg))
        with self._lock:
            self._save(job)
        self.tick()
        return self.get(job.id)

    def stop(self, job_id: str) -> Job:
        with self._lock:
            job = self.get(job_id)
            if job.status == "queued":
                job.status, job.message = ("stopped" if job.resume else "cancelled"), "removed from the queue"
            elif job.status == "running" and job.pid:
                try:
                    os.kill(job.pid, signal.SIGINT)  # the trainer saves a checkpoint and exits
                except ProcessLookupError:
                    pass
                job.status = "stopping"
            self._save(job)
            return job

    def resume(self, job_id: str) -> Job:
        with self._lock:
            job = self.get(job_id)
            if job.status not in ("stopped", "failed"):
                raise LoraforgeError(f"job {job_id} is {job.status}: only a stopped or failed run can be resumed")
            if not complete_checkpoints(job.run_dir(self.state_dir)):
                raise LoraforgeError(f"job {job_id}: its run folder has no checkpoint to resume from; start it again")
            job.status, job.resume, job.message = "queued", True, ""
            self._save(job)
        self.tick()
        return self.get(job.id)

    # ------------------------------------------------------------------------------------------------ running
    def command(self, job: Job) -> list[str]:
        cmd = [self.python, "-m", "loraforge", "train", str(job.folder(self.state_dir) / CONFIG_FILE)]
        return cmd + (["--set", "training.resume=latest"] if job.resume else [])

    def _alive(self, job: Job) -> bool:
        proc = self._procs.get(job.id)
        if proc is not None:
            return proc.poll() is None
        if not job.pid:  # started by an earlier UI process: is its pid still this job's run?
            return False
        try:
            cmdline = Path(f"/proc/{job.pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return False
        return str(job.folder(self.state_dir)) in cmdline

    def _finish(self, job: Job) -> None:
        proc = self._procs.pop(job.id, None)
        job.returncode = proc.returncode if proc is not None else None
        ends = [r for r in read_metrics(job.run_dir(self.state_dir)) if r.get("kind") in ("start", "end")]
        last = ends[-1] if ends else {}
        if last.get("kind") == "end":
            job.status, job.message = last["status"], last.get("message", "")
        elif job.status == "stopping" or job.returncode == 130:  # stopped before the trainer's first line
            job.status, job.message = "stopped", "stopped before training began"
        else:
            job.status = "failed"
        if job.status == "failed" and not job.message:
            job.message = console_tail(job.folder(self.state_dir) / CONSOLE_FILE)
        job.pid, job.ended = None, time.time()
        job.history.append(f"{job.status} at step {last.get('step', '?')}")

    def _start(self, job: Job) -> None:
        folder = job.folder(self.state_dir)
        with open(folder / CONSOLE_FILE, "ab") as console:
            # a UI started in the background by a script ignores SIGINT, and its children would inherit that: the
            # stop button (SIGINT) would then never reach a run that has not installed its own handler yet
            sigint = _sigint_default if signal.getsignal(signal.SIGINT) == signal.SIG_IGN else None
            proc = subprocess.Popen(self.command(job), stdout=console, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=sigint)
        self._procs[job.id] = proc
        job.status, job.pid, job.started, job.returncode, job.message = "running", proc.pid, time.time(), None, ""
        job.history.append("resumed" if job.resume else "started")

    def tick(self) -> None:
        """Record the runs that ended, then start the oldest queued job when none runs."""
        with self._lock:
            jobs = self.jobs()
            running = False
            for job in jobs:
                if job.status in ACTIVE:
                    if self._alive(job):
                        running = True
                    else:
                        self._finish(job)
                        self._save(job)
            if not running:
                queued = [j for j in jobs if j.status == "queued"]
                if queued:
                    self._start(queued[0])
                    self._save(queued[0])

    def run_forever(self, stop: threading.Event, every_s: float = 0.5) -> None:
        while not stop.wait(every_s):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - keep the queue alive; the next request reports the problem
                log.exception("the job queue's tick failed")


def console_tail(path: Path, lines: int = 15) -> str:
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")  # progress bars use \r
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])
