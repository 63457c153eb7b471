"""A run folder's progress for the UI, read from `metrics.jsonl` (training/metrics.py), `train.log` and its files."""

from __future__ import annotations

import re
from pathlib import Path

from ..training.metrics import read_metrics, step_series

# training/outputs.py logs the save-time consumer check as `check <file>: <verdict>` (INFO), then any misses (WARNING)
REPORT_FILE = "report.html"  # the run's own report, when the trainer writes one
CHECK_LINE = re.compile(r" (?P<level>INFO|WARNING) loraforge\.training\.outputs: check (?P<name>[^:]+): (?P<text>.*)$")


def run_progress(run_dir: Path) -> dict:
    """What the page shows: the last step's numbers, the loss and lr series, samples, result files, the check."""
    records = read_metrics(run_dir)
    steps = step_series(records)
    last = steps[-1] if steps else {}
    starts = [r for r in records if r.get("kind") == "start"]
    ends = [r for r in records if r.get("kind") == "end"]
    max_steps = last.get("max_steps") or (starts[-1]["max_steps"] if starts else None)
    return {
        "step": last.get("step", starts[-1]["step"] if starts else 0),
        "max_steps": max_steps,
        "loss": last.get("loss"),
        "loss_smooth": last.get("loss_smooth"),
        "lr": last.get("lr", {}),
        "it_s": last.get("it_s"),
        "eta_s": last.get("eta_s"),
        "memory_mb": last.get("memory_mb"),
        "series": [{"step": s["step"], "loss": s.get("loss"), "loss_smooth": s.get("loss_smooth"),
                    "lr": s.get("lr", {})} for s in steps],
        "samples": [{"step": r["step"], "tag": r.get("tag", ""), "files": r.get("files", [])}
                    for r in records if r.get("kind") == "sample"],
        "end": ends[-1] if ends and (not starts or ends[-1]["time"] >= starts[-1]["time"]) else None,
        "files": result_files(run_dir),
        "report": (run_dir / REPORT_FILE).is_file(),
        "check": check_lines(run_dir),
    }


def result_files(run_dir: Path) -> list[dict]:
    """The LoRA and embeddings files at the top of the run folder (checkpoints live in `checkpoints/`)."""
    if not run_dir.is_dir():
        return []
    return [{"name": p.name, "bytes": p.stat().st_size} for p in sorted(run_dir.glob("*.safetensors"))
            if not p.name.startswith(".")]


def check_lines(run_dir: Path) -> list[str]:
    """The consumer-check lines of the final files' last save, read from `train.log`."""
    log = run_dir / "train.log"
    if not log.is_file():
        return []
    names = {f["name"] for f in result_files(run_dir)}
    found: dict[str, list[str]] = {}
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        m = CHECK_LINE.search(line)
        if m and m["name"] in names:
            if m["level"] == "INFO":  # the summary line starts each save's report
                found[m["name"]] = []
            found.setdefault(m["name"], []).append(f"{m['name']}: {m['text']}")
    return [line for lines in found.values() for line in lines]
