"""`metrics.jsonl`: what a run did, one JSON object a line, appended as it happens in the run folder.

The one record of a run's progress that the web UI (live progress), `report.html` and anything else read; TensorBoard
/ wandb get the same scalars through accelerate. Each line has a `kind`:

* `start`: `time`, `run_id`, `max_steps`, `step` (0, or the step a resume continues from), `resumed`;
* `step`: `time`, `step`, `epoch`, `max_steps`, `loss`, `loss_smooth` (exponential moving average, bias-corrected),
  `lr` (group -> value), `grad_norm` (before clipping; null when not clipped), `it_s` (steps per second over the
  last steps), `eta_s`, `memory_mb` (peak: CUDA allocated, else the process's resident set), and any extra scalars
  the trainer logs (e.g. `d` of Prodigy);
* `sample`: `time`, `step`, `tag`, `files` (paths relative to the run folder);
* `validation`: `time`, `step`, `loss` (the validation loss, `training.validation_*`), `best` (lowest so far);
* `checkpoint`: `time`, `step`, `path` (relative);
* `end`: `time`, `step`, `status` ("done", "stopped" or "failed"), `message`.

A resumed run appends to the same file (a new `start` with `resumed: true`): readers keep the last line of each step.
Only the main process writes. Each line is written with one `write` and flushed, so a reader never sees half of one
except possibly the last line of a file being written, which `read_metrics` skips.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from collections import deque
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
SMOOTHING = 0.9  # weight of the past in `loss_smooth`


def peak_memory_mb(device=None) -> float:
    """Peak memory of this process: CUDA's max allocated on a CUDA device, else the peak resident set (RSS)."""
    import torch

    if device is not None and getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)


def _number(v):
    """JSON has no NaN / Inf: they are written as strings ("nan"), which readers show as such."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsLog:
    """Appends the records of one run (one process: call only on the main process, or pass `enabled=False`)."""

    def __init__(self, run_dir: Path, *, enabled: bool = True, device=None, window: int = 20):
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = enabled
        self.device = device
        self._times: deque[tuple[int, float]] = deque(maxlen=window)
        self._smooth = 0.0
        self._seen = 0

    def _write(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {"kind": record.pop("kind"), "time": round(time.time(), 3), **record}
        line = json.dumps({k: _number(v) for k, v in record.items()}) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)

    def start(self, *, run_id: str, max_steps: int, step: int, resumed: bool) -> None:
        self._times.clear()
        self._times.append((step, time.time()))
        self._write({"kind": "start", "run_id": run_id, "max_steps": max_steps, "step": step, "resumed": resumed})

    def step(self, *, step: int, epoch: int, max_steps: int, loss: float, lrs: dict, grad_norm: float | None = None,
             **extra) -> dict:
        """Write one step's line; returns it (the smoothed loss, speed and ETA computed here)."""
        if math.isfinite(loss):
            self._seen += 1
            self._smooth = SMOOTHING * self._smooth + (1 - SMOOTHING) * loss
        smooth = self._smooth / (1 - SMOOTHING**self._seen) if self._seen else None
        now = time.time()
        self._times.append((step, now))
        (s0, t0) = self._times[0]
        it_s = (step - s0) / (now - t0) if step > s0 and now > t0 else None
        record = {
            "kind": "step", "step": step, "epoch": epoch, "max_steps": max_steps, "loss": loss,
            "loss_smooth": None if smooth is None else round(smooth, 6), "lr": lrs,
            "grad_norm": grad_norm, "it_s": None if it_s is None else round(it_s, 4),
            "eta_s": None if not it_s else round((max_steps - step) / it_s, 1),
            "memory_mb": peak_memory_mb(self.device), **extra,
        }
        self._write(dict(record))
        return record

    def sample(self, *, step: int, tag: str, files: list[Path], run_dir: Path) -> None:
        self._write({"kind": "sample", "step": step, "tag": tag,
                     "files": [str(Path(f).relative_to(run_dir)) if Path(f).is_relative_to(run_dir) else str(f)
                               for f in files]})

    def validation(self, *, step: int, loss: float, best: bool) -> None:
        self._write({"kind": "validation", "step": step, "loss": loss, "best": best})

    def checkpoint(self, *, step: int, path: Path, run_dir: Path) -> None:
        self._write({"kind": "checkpoint", "step": step, "path": str(Path(path).relative_to(run_dir))})

    def end(self, *, step: int, status: str, message: str = "") -> None:
        self._write({"kind": "end", "step": step, "status": status, "message": message})


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of a run folder's `metrics.jsonl` (none if it has none); a torn last line is skipped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the line being written
    return records


def step_series(records: list[dict]) -> list[dict]:
    """The `step` records, one per step (the last written wins: a resumed run may repeat steps), in step order."""
    by_step = {}
    for r in records:
        if r.get("kind") == "step":
            by_step[r["step"]] = r
    return [by_step[s] for s in sorted(by_step)]


TRACKED = ("loss_smooth", "it_s", "memory_mb")  # the step line's scalars the trainer does not log itself


def tracker_scalars(record: dict) -> dict:
    """The scalars of a `step` line that TensorBoard / wandb get beside the loss, lr, grad norm and d the trainer
    logs: the smoothed loss, it/s and peak memory (as `loss/smooth`, `speed/it_s`, `memory/peak_mb`)."""
    names = {"loss_smooth": "loss/smooth", "it_s": "speed/it_s", "memory_mb": "memory/peak_mb"}
    return {names[k]: record[k] for k in TRACKED if isinstance(record.get(k), (int, float))}


def log_sample_images(accelerator, files: list[Path], step: int) -> int:
    """Give the sample images (not the grid) to a TensorBoard tracker, as `samples/<index>` at `step`, so its image
    slider shows each prompt's image over the run; returns how many were logged (0 without a tracker)."""
    import numpy as np
    from PIL import Image

    writers = [t.writer for t in getattr(accelerator, "trackers", []) if t.name == "tensorboard"]
    images = [Path(f) for f in files if not Path(f).name.endswith("_grid.png")]
    for writer in writers:
        for i, path in enumerate(images):
            with Image.open(path) as img:
                writer.add_image(f"samples/{i}", np.asarray(img.convert("RGB")), step, dataformats="HWC")
        writer.flush()
    return len(images) if writers else 0
