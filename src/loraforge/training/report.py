"""`report.html`: one self-contained page about a run, written beside its files when the run ends (done, stopped or
failed) and rewritten by `loraforge report RUN_DIR`.

Everything comes from what the run folder already holds: `metrics.jsonl` (loss, smoothed loss, lr per group, grad
norm, Prodigy's d, it/s, memory, samples, checkpoints, the end status), `train.log` (the save-time consumer check
lines, `check NAME.safetensors: ...`) and the resolved config (`config.toml` of a finished run, else the one in
the newest checkpoint). Plots are inline SVG, CSS is inline, sample images are linked by their path relative to
the run folder: the page opens from disk in any browser, without a server.
"""

from __future__ import annotations

import html
import logging
import math
import re
from pathlib import Path

from ..utils.files import write_text_atomic
from .metrics import read_metrics, step_series
from .state import FINAL_MARKER, RUN_CONFIG_FILE, checkpoints_dir

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; text-align: left; border-bottom: 1px solid #eee; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
.samples img { width: 160px; margin: 2px; image-rendering: pixelated; }
.status-done { color: #2ca02c; } .status-stopped { color: #ff7f0e; } .status-failed { color: #d62728; }
svg text { font-size: 11px; fill: #444; }
"""


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def svg_plot(title: str, series: dict[str, list[tuple[float, float]]], *, width: int = 520, height: int = 240,
             log_y: bool = False) -> str:
    """A line plot of `series` (name -> [(x, y)]) as an inline `<svg>`; non-finite points are left out."""
    pts = {name: [(x, y) for x, y in xy if _finite(x) and _finite(y) and (y > 0 or not log_y)]
           for name, xy in series.items()}
    pts = {name: xy for name, xy in pts.items() if xy}
    esc = html.escape
    if not pts:
        return f'<svg width="{width}" height="40"><text x="4" y="20">{esc(title)}: no data</text></svg>'
    ty = (lambda y: math.log10(y)) if log_y else (lambda y: y)
    xs = [x for xy in pts.values() for x, _ in xy]
    ys = [ty(y) for xy in pts.values() for _, y in xy]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + abs(y0) * 0.1 + 1e-12)
    left, right, top, bottom = 60, 10, 22, 28
    pw, ph = width - left - right, height - top - bottom

    def sx(x):
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y):
        return top + ph - (ty(y) - y0) / (y1 - y0) * ph

    def label(v):
        return f"{10 ** v:.3g}" if log_y else f"{v:.4g}"

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
           f'<text x="{left}" y="14" font-weight="bold">{esc(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/>',
           f'<text x="{left - 4}" y="{top + 10}" text-anchor="end">{label(y1)}</text>',
           f'<text x="{left - 4}" y="{top + ph}" text-anchor="end">{label(y0)}</text>',
           f'<text x="{left}" y="{height - 10}">{x0:g}</text>',
           f'<text x="{left + pw}" y="{height - 10}" text-anchor="end">{x1:g}</text>']
    for i, (name, xy) in enumerate(pts.items()):
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in xy)
        out.append(f'<polyline class="series" data-name="{esc(name)}" fill="none" stroke="{color}" '
                   f'stroke-width="1.5" points="{path}"/>')
        out.append(f'<text x="{left + pw - 4}" y="{top + 14 + 13 * i}" text-anchor="end" fill="{color}" '
                   f'style="fill:{color}">{esc(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def run_config_text(run_dir: Path) -> str | None:
    """The resolved config: the finished run's `config.toml`, else the newest checkpoint's."""
    final = run_dir / FINAL_MARKER
    if final.is_file():
        return final.read_text(encoding="utf-8")
    folder = checkpoints_dir(run_dir)
    stored = sorted(folder.glob(f"step-*/{RUN_CONFIG_FILE}")) if folder.is_dir() else []
    return stored[-1].read_text(encoding="utf-8") if stored else None


_CHECK_LINE = re.compile(r" (INFO|WARNING) [\w.]+: check (\S+?): (.*)$")
_CHECKPOINT_FILE = re.compile(r"-step\d{8}")  # the files of checkpoints/step-N/ (trainer.save_checkpoint)


def check_lines(run_dir: Path) -> dict[str, list[str]]:
    """The save-time consumer checks, from `train.log`: file name -> its summary line (logged at INFO) and the
    details of any miss (the WARNING lines after it); the newest check of each name. The final files of a finished
    run when there are any, else the newest checkpoint's."""
    log_file = run_dir / "train.log"
    if not log_file.is_file():
        return {}
    checks: dict[str, list[str]] = {}
    for line in log_file.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _CHECK_LINE.search(line)
        if not m:
            continue
        level, file, text = m.groups()
        if level == "INFO":  # a new check (the summary line): it replaces an earlier one of the same file
            checks.pop(file, None)
            checks[file] = [text]
        elif file in checks:
            checks[file].append(text)
    final = {k: v for k, v in checks.items() if not _CHECKPOINT_FILE.search(k)}
    if final:
        return final
    last_step = max((_CHECKPOINT_FILE.search(k).group(0) for k in checks), default=None)
    return {k: v for k, v in checks.items() if last_step and last_step in k}


def _timings(records: list[dict], steps: list[dict]) -> list[tuple[str, str]]:
    rows = []
    starts = [r for r in records if r.get("kind") == "start"]
    ends = [r for r in records if r.get("kind") == "end"]
    if starts and (ends or steps):
        last = max(r["time"] for r in records if "time" in r)
        total = last - starts[0]["time"]
        rows.append(("wall time", f"{total:.1f} s ({len(starts)} session(s))"))
    speeds = [r["it_s"] for r in steps if _finite(r.get("it_s"))]
    if speeds:
        rows.append(("speed", f"{speeds[-1]:.3g} it/s at the end (mean {sum(speeds) / len(speeds):.3g} it/s)"))
    memory = [r["memory_mb"] for r in steps if _finite(r.get("memory_mb"))]
    if memory:
        rows.append(("peak memory", f"{max(memory):.0f} MiB (CUDA allocated on a GPU, else the process's RSS)"))
    return rows


def render_report(run_dir: Path) -> str:
    """The HTML text of the report of `run_dir`."""
    run_dir = Path(run_dir)
    esc = html.escape
    records = read_metrics(run_dir)
    steps = step_series(records)
    ends = [r for r in records if r.get("kind") == "end"]
    end = ends[-1] if ends else None
    max_steps = steps[-1]["max_steps"] if steps else next((r["max_steps"] for r in records if "max_steps" in r), 0)
    status = end["status"] if end else "running (or killed)"
    done = steps[-1]["step"] if steps else 0
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{esc(run_dir.name)} — loraforge report"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>Run {esc(run_dir.name)}</h1>",
             f'<p>Status: <b class="status-{esc(status.split()[0])}">{esc(status)}</b> at step {done} of {max_steps}'
             + (f" — {esc(end['message'])}" if end and end.get("message") else "") + "</p>"]
    # ------------------------------------------------------------------------------------------ plots
    loss = [(r["step"], r["loss"]) for r in steps]
    smooth = [(r["step"], r["loss_smooth"]) for r in steps]
    groups = sorted({g for r in steps for g in (r.get("lr") or {})})
    lrs = {g: [(r["step"], (r.get("lr") or {}).get(g)) for r in steps] for g in groups}
    validation = {r["step"]: r["loss"] for r in records if r.get("kind") == "validation"}  # the last per step
    series = {"loss": loss, "smoothed": smooth}
    if validation:
        series["validation"] = sorted(validation.items())
    plots = [svg_plot("loss", series), svg_plot("learning rate per group", lrs)]
    if any(_finite(r.get("grad_norm")) for r in steps):
        plots.append(svg_plot("grad norm (before clipping)", {"grad_norm": [(r["step"], r.get("grad_norm"))
                                                                            for r in steps]}))
    if any(_finite(r.get("d")) for r in steps):
        plots.append(svg_plot("Prodigy's d", {"d": [(r["step"], r.get("d")) for r in steps]}))
    parts += ["<h2>Training</h2>", '<div class="plots">', *plots, "</div>"]
    # ------------------------------------------------------------------------------------------ timings
    rows = _timings(records, steps)
    if rows:
        parts += ["<h2>Timings and memory</h2>", "<table>",
                  *(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows), "</table>"]
    # ------------------------------------------------------------------------------------------ samples
    samples = [r for r in records if r.get("kind") == "sample"]
    if samples:
        parts += ["<h2>Samples by step</h2>", '<table class="samples">']
        for r in samples:
            images = "".join(f'<a href="{esc(f)}"><img src="{esc(f)}" alt="{esc(f)}"></a>' for f in r["files"]
                             if not f.endswith("_grid.png"))
            parts.append(f"<tr><th>step {r['step']}<br>{esc(r['tag'])}</th><td>{images}</td></tr>")
        parts.append("</table>")
    # ------------------------------------------------------------------------------------------ check
    checks = check_lines(run_dir)
    parts.append("<h2>Consumer check at save time</h2>")
    for name, lines in checks.items():
        parts.append(f'<p class="check">{esc(name)}: <b>{esc(lines[0])}</b></p>')
        if len(lines) > 1:
            parts.append("<pre>" + esc("\n".join(lines[1:])) + "</pre>")
    if not checks:
        parts.append("<p>no LoRA file was checked in this run (none saved yet)</p>")
    # ------------------------------------------------------------------------------------------ checkpoints
    ckpts = [r for r in records if r.get("kind") == "checkpoint"]
    if ckpts:
        parts += ["<h2>Checkpoints</h2>", "<p>" + ", ".join(f"step {r['step']}: {esc(r['path'])}"
                                                             for r in ckpts) + "</p>"]
    config = run_config_text(run_dir)
    parts += ["<h2>Resolved config</h2>", "<pre>" + esc(config or "(no config.toml written yet)") + "</pre>",
              "</body></html>\n"]
    return "\n".join(parts)


def write_report(run_dir: Path) -> Path:
    """Write `<run_dir>/report.html` (atomically) and return its path."""
    target = Path(run_dir) / REPORT_FILE
    write_text_atomic(target, render_report(run_dir))
    return target


def write_report_quietly(run_dir: Path) -> Path | None:
    """`write_report` at the end of a run: a failure to write the report is logged, never raised (it must not
    hide the run's own result or error)."""
    try:
        return write_report(run_dir)
    except Exception as e:  # noqa: BLE001 - the report is a convenience; the run's outcome matters more
        log.warning("could not write %s: %s: %s", Path(run_dir) / REPORT_FILE, type(e).__name__, e)
        return None
