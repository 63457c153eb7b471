"""Commands about a run and its inputs: `report` (rewrite a run's report.html), `plan` (memory and time estimate),
`dataset check` and `dataset caption`. Argparse only at import time; each command imports its layer when it runs."""

from __future__ import annotations

from pathlib import Path


# ------------------------------------------------------------------------------------------------------ report
def add_report(sub) -> None:
    p = sub.add_parser("report", help="(re)write a run folder's report.html from its metrics.jsonl",
        description=(
            "Write RUN_DIR/report.html: loss (raw and smoothed), lr per group, grad norm, Prodigy's d, the "
            "sample images by step, the save-time consumer check, the resolved config, timings and memory. "
            "Training writes it at the end of every run; this rewrites it (e.g. for a run still going, or "
            "killed)."
        ))
    p.add_argument("run_dir", help="a run folder (output.output_dir / output.output_name)")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from ..errors import RunFolderError
    from ..training.metrics import METRICS_FILE
    from ..training.report import write_report

    run_dir = Path(args.run_dir)
    if not (run_dir / METRICS_FILE).is_file():
        raise RunFolderError(f"{run_dir}: no {METRICS_FILE} in it; give a run folder that training wrote "
                             "(output.output_dir / output.output_name)")
    print(write_report(run_dir))
    return 0


RUN_COMMANDS = [add_report]
