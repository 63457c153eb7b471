"""The estimate of `loraforge plan --cpu` against a measured CPU run of the same config (docs/plan.md).

    PYTHONPATH=src python scripts/plan_vs_measured.py [--steps 12] [--out /tmp/plan-vs-measured]

For each config: the plan's JSON estimate (peak memory = the process's resident set, seconds per step), then a real
training run of that config in a fresh process, whose metrics.jsonl gives the measured peak RSS (`memory_mb`, the
last step's) and speed (`it_s` over the last steps). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CONFIGS = {
    "tiny SD 1.5, 64 px, batch 1, rank 16": ["model.family='sd15'"],
    "tiny SD 1.5, 64 px, batch 4, rank 16": ["model.family='sd15'", "training.batch_size=4"],
    "tiny SDXL, 64 px, batch 2, rank 16, GC": ["model.family='sdxl'", "training.batch_size=2",
                                               "training.gradient_checkpointing=true"],
}


def loraforge(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "loraforge", *args], capture_output=True, text=True, check=True)
    return done.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", default="/tmp/plan-vs-measured")
    args = ap.parse_args()
    rows = ["| config | estimated peak RSS | measured | estimated s/step | measured |", "|---|---|---|---|---|"]
    for i, (name, sets) in enumerate(CONFIGS.items()):
        sets = [*sets, f"output.output_dir='{args.out}'", f"output.output_name='run{i}'", "output.overwrite=true",
                f"training.max_train_steps={args.steps}", "output.log_with='none'", "sampling.at_end=false",
                "network.rank=16"]
        flags = [x for s in sets for x in ("--set", s)]
        est = json.loads(loraforge("plan", "--cpu", "--json", *flags))["estimates"][0]
        loraforge("train", *flags)
        steps = [json.loads(line) for line in (Path(args.out) / f"run{i}" / "metrics.jsonl").read_text().splitlines()]
        last = [s for s in steps if s["kind"] == "step"][-1]
        rows.append(f"| {name} | {est['peak_gib'] * 1024:.0f} MiB | {last['memory_mb']:.0f} MiB | "
                    f"{est['step_s']:.3f} | {1 / last['it_s']:.3f} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
