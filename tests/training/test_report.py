"""report.html beside every run's files, `loraforge report RUN_DIR`, and TensorBoard's scalars and sample images."""

import re
from pathlib import Path

import pytest

from loraforge.cli import main
from loraforge.training.metrics import read_metrics, step_series
from loraforge.training.report import REPORT_FILE, check_lines, svg_plot
from loraforge.training.trainer import Trainer


def _points(svg_html: str, name: str) -> int:
    m = re.search(rf'data-name="{re.escape(name)}"[^>]*points="([^"]*)"', svg_html)
    return len(m.group(1).split()) if m else 0


def test_a_finished_run_writes_a_self_contained_report_and_tensorboard_gets_the_same(make_config):
    cfg = make_config("sd15", **{"training.max_train_steps": 3, "sampling.sample_every_n_steps": 2,
                                 "optimizer.max_grad_norm": 1.0, "output.log_with": "tensorboard",
                                 "network.train_text_encoder": True})
    run = Trainer(cfg).run().run_dir
    page = (run / REPORT_FILE).read_text()
    assert 'class="status-done"' in page and "at step 3 of 3" in page
    # loss raw and smoothed, lr per group (unet and text encoder), grad norm: one point per step
    for name in ("loss", "smoothed", "grad_norm"):
        assert _points(page, name) == 3, name
    groups = step_series(read_metrics(run))[0]["lr"]
    assert len(groups) >= 2 and all(_points(page, g) == 3 for g in groups)
    # samples linked by relative path (no server), the check of the final file, config and timings
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert srcs and all(not s.startswith("/") and (run / s).is_file() for s in srcs)
    assert 'class="check">run-sd15.safetensors: <b>ComfyUI' in page
    assert "[training]" in page and "max_train_steps = 3" in page
    assert "it/s" in page and "MiB" in page
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    # TensorBoard: the smoothed loss, speed and memory beside the loss, and the sample images at their step
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((run / "logs").rglob("events.out.tfevents*")).parent),
                              size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"loss", "loss/smooth", "speed/it_s", "memory/peak_mb", "grad_norm"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("loss/smooth")] == [1, 2, 3]
    assert "samples/0" in tags["images"] and [e.step for e in events.Images("samples/0")] == [2]
    # `loraforge report` rewrites it (here after deleting it)
    (run / REPORT_FILE).unlink()
    assert main(["report", str(run)]) == 0 and (run / REPORT_FILE).read_text() == page


def test_a_failed_run_still_gets_its_report(make_config, monkeypatch):
    def boom(self, batch, *args, **kwargs):
        raise RuntimeError("out of luck")

    monkeypatch.setattr(Trainer, "compute_loss", boom)
    cfg = make_config("sd15", **{"training.max_train_steps": 2})
    with pytest.raises(RuntimeError):
        Trainer(cfg).run()
    run = Path(cfg.output.output_dir) / cfg.output.output_name
    page = (run / REPORT_FILE).read_text()
    assert 'class="status-failed"' in page and "RuntimeError: out of luck" in page
    assert "no LoRA file was checked" in page


def test_report_command_refuses_a_folder_without_metrics(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_plot_scales_and_skips_non_finite_points():
    svg = svg_plot("x", {"a": [(1, 1.0), (2, "nan"), (3, 3.0)], "b": []})
    assert _points(svg, "a") == 2 and 'data-name="b"' not in svg
    xs = [float(p.split(",")[1]) for p in re.search(r'points="([^"]*)"', svg).group(1).split()]
    assert xs[0] > xs[1]  # larger values are higher on the page


def test_check_lines_keep_the_newest_check_of_the_final_file(tmp_path):
    (tmp_path / "train.log").write_text(
        "t INFO loraforge.training.outputs: check r-step00000002.safetensors: ComfyUI 1/2 modules\n"
        "t INFO loraforge.training.outputs: check r.safetensors: ComfyUI 9/9 modules, old\n"
        "t INFO loraforge.training.outputs: check r.safetensors: ComfyUI 8/9 modules\n"
        "t WARNING loraforge.training.outputs: check r.safetensors: ComfyUI: 1 key unmatched\n")
    assert check_lines(tmp_path) == {"r.safetensors": ["ComfyUI 8/9 modules", "ComfyUI: 1 key unmatched"]}
