"""`loraforge bench` on the CPU: a tiny grid (tiny SD 1.5, 64 px, 2 timed steps) through the command line, timing
the trainer's own step; the figures are real numbers that follow the grid."""

import json
import math

from loraforge.cli import main
from loraforge.tools.bench import Case, grid, markdown
from loraforge.training.step import LossStep


def test_bench_times_the_real_trainer_step_and_its_figures_follow_the_grid(tmp_path, tiny_dirs, monkeypatch):
    calls = []
    compute_loss = LossStep.compute_loss
    monkeypatch.setattr(LossStep, "compute_loss", lambda self, *a, **k: calls.append(1) or compute_loss(self, *a, **k))
    out, table = tmp_path / "bench.json", tmp_path / "bench.md"
    assert main(["bench", "--batch", "1,2", "--steps", "2", "--warmup", "1", "--baseline", "--peak-tflops", "0.5",
                 "-o", str(out), "--markdown", str(table)]) == 0
    report = json.loads(out.read_text())
    rows = {(r["batch"], r["impl"]): r for r in report["rows"]}
    assert set(rows) == {(1, "loraforge"), (1, "plain-pytorch"), (2, "loraforge"), (2, "plain-pytorch")}
    assert len(calls) == 2 * (1 + 1 + 2)  # per point: the FLOP count, the warm-up and the timed steps
    for r in rows.values():
        for key in ("images_per_s", "step_s_median", "step_s_min", "step_s_max", "flops_per_step", "peak_rss_mib",
                    "achieved_tflops", "mfu"):
            assert isinstance(r[key], (int, float)) and math.isfinite(r[key]) and r[key] > 0, (key, r)
        assert r["step_s_min"] <= r["step_s_median"] <= r["step_s_max"] and r["steps_timed"] == 2
        assert r["optimizer_steps"] == 3  # the trainer's loop ran warm-up and timed steps
        assert math.isclose(r["images_per_s"], r["batch"] / r["step_s_median"])
        assert math.isclose(r["mfu"], r["flops_per_step"] / r["step_s_median"] / 1e12 / 0.5)
        assert r["peak_allocated_mib"] is None and r["device"].startswith("cpu")
    one, two = rows[(1, "loraforge")], rows[(2, "loraforge")]
    assert 1.9 < two["flops_per_step"] / one["flops_per_step"] < 2.1  # twice the images, twice the work
    assert one["flops_per_step"] == rows[(1, "plain-pytorch")]["flops_per_step"]
    lines = table.read_text().splitlines()
    assert len(lines) == 2 + 4 and "| loraforge |" in lines[2] and "| plain-pytorch |" in lines[3]


def test_the_grid_is_every_combination_and_the_mfu_is_left_out_without_a_peak():
    cases = grid(batch=[1, 4], checkpointing=[False, True], family=["sdxl"])
    assert len(cases) == 4 and {c.family for c in cases} == {"sdxl"}
    assert Case(family="sdxl", batch=4, checkpointing=True) in cases
    options = grid(checkpointing=[False, True, "selective"], quantize=["none", "int8"], channels_last=[True])
    assert len(options) == 6 and Case(checkpointing="selective", quantize="int8", channels_last=True) in options
    row = {**Case().__dict__, "impl": "loraforge", "images_per_s": 2.0, "step_s_median": 0.5, "step_s_min": 0.4,
           "step_s_max": 0.6, "peak_rss_mib": 100.0, "achieved_tflops": 0.01, "mfu": None}
    assert "| — |" in markdown({"rows": [row]}).splitlines()[2]


def test_mid_and_full_size_models_are_the_real_architecture_at_their_width():
    from loraforge.tools.bench import random_model

    full = random_model("sdxl", "meta", "full")
    mid = random_model("sdxl", "meta", "mid")
    assert list(full.unet.config.block_out_channels) == [320, 640, 1280]
    assert list(mid.unet.config.block_out_channels) == [128, 256, 512]
    for key in ("transformer_layers_per_block", "cross_attention_dim", "addition_embed_type", "layers_per_block"):
        assert mid.unet.config[key] == full.unet.config[key]
    assert sum(p.numel() for p in mid.unet.parameters()) < 0.25 * sum(p.numel() for p in full.unet.parameters())
    assert [type(te).__name__ for te in mid.text_encoders] == ["CLIPTextModel", "CLIPTextModelWithProjection"]
    assert mid.family.name == "sdxl" and mid.prediction_type == "epsilon"


def test_the_fast_path_axes_reach_the_grid_from_the_command_line(monkeypatch, tmp_path):
    import loraforge.tools.bench as bench

    seen = []
    monkeypatch.setattr(bench, "run_grid", lambda cases, *a, **k: seen.extend(cases) or {"rows": []})
    assert main(["bench", "--checkpointing", "off,selective", "--compile", "reduce-overhead", "--quantize", "int8",
                 "--channels-last", "on", "-o", str(tmp_path / "b.json")]) == 0
    assert [(c.checkpointing, c.compile, c.quantize, c.channels_last) for c in seen] == [
        (False, "reduce-overhead", "int8", True), ("selective", "reduce-overhead", "int8", True)]
