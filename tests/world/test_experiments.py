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
