"""scripts/experiments.py: every variant trains and is scored, one row each, with the overrides that reproduce it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("experiments", ROOT / "scripts" / "experiments.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_group_names_real_config_keys():
    from loraforge.config import load_config
    from loraforge.tools.concept_demo import DEMO_SETTINGS

    for group, variants in _script().EXPERIMENTS.items():
        for name, overrides in variants.items():
            sets = [f"{k}={json.dumps(v)}" for k, v in {**DEMO_SETTINGS, **overrides}.items()]
            cfg = load_config(None, sets)  # a typo or a refused combination raises here
            for key, value in overrides.items():
                section, field = key.split(".")
                assert getattr(getattr(cfg, section), field) == value, (group, name, key)


def test_a_group_runs_each_variant_and_writes_the_table(random_toy, tmp_path):
    exp = _script()
    groups = {"noise offset": exp.EXPERIMENTS["noise offset"]}
    rows = exp.run_experiments(tmp_path, groups, steps=1, eval_steps=1, seeds=1)
    assert [r["variant"] for r in rows] == ["0", "0.1"]
    assert json.loads((tmp_path / "results.json").read_text()) == rows
    assert all(Path(r["grid"]).is_file() and 0 <= r["concept_score"] <= 1 for r in rows)
    from safetensors import safe_open

    offsets = []
    for r in rows:  # the overrides reached the training run: its LoRA's metadata says so
        with safe_open(r["lora"], "pt") as f:
            offsets.append(f.metadata().get("ss_noise_offset"))
    assert offsets[1] == "0.1" and offsets[0] in (None, "None", "0", "0.0"), offsets
    text = exp.table(rows)
    assert "| noise offset | 0.1 |" in text and '`--set training.noise_offset=0.1`' in text and "(reference)" in text


def test_equal_overrides_train_once_and_the_base_images_are_shared(tmp_path):
    """Every group's reference is the same run: it trains once, later references reuse its scores; every run gets
    the same `base_images` dict, so the base model's images are generated once."""
    from types import SimpleNamespace

    exp = _script()
    calls = []

    def runner(folder, *, steps, eval_steps, seeds, overrides, base_images):
        calls.append((dict(overrides), id(base_images)))
        base_images.setdefault("made", len(calls))
        report = SimpleNamespace(lora_scores={"concept_score": 0.5 + 0.1 * len(calls), "fidelity": 1.0,
                                              "leakage": 0.0}, base={"concept_score": 0.0}, drift=0.01, grid="g.png")
        return SimpleNamespace(report=report, lora=folder / "x.safetensors")

    groups = {g: exp.EXPERIMENTS[g] for g in ("noise offset", "caption dropout")}
    rows = exp.run_experiments(tmp_path, groups, steps=1, eval_steps=1, seeds=1, runner=runner)
    assert [c[0] for c in calls] == [{}, {"training.noise_offset": 0.1}, {"dataset.caption_dropout_rate": 0.1}]
    assert len({c[1] for c in calls}) == 1  # one base_images dict for every run
    ref, reused = rows[0], rows[2]
    assert (reused["group"], reused["variant"], reused["reused_from"]) == ("caption dropout", "0", "noise offset")
    assert reused["concept_score"] == ref["concept_score"] and rows[3]["concept_score"] != ref["concept_score"]
