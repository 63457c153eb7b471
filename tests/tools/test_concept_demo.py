"""The concept demo's plumbing on the toy architecture (random weights stand in for the pretrained ones here; what
the pretrained model learns is measured by the toy-world tests that need its weights)."""

from __future__ import annotations

import json

from loraforge.tools.concept_demo import concept_demo


def test_concept_demo_writes_data_trains_and_evaluates(random_toy, tmp_path):
    result = concept_demo(tmp_path / "demo", steps=2, images=4, eval_steps=2,
                          overrides={"training.batch_size": 2})
    captions = sorted((tmp_path / "demo" / "data").glob("*.txt"))
    assert len(captions) == 4 and all("TOK" in p.read_text() for p in captions)
    assert result.lora.is_file() and result.lora.parent == result.run_dir
    report = json.loads((tmp_path / "demo" / "eval" / "eval.json").read_text())
    assert report["lora"] == str(result.lora) and report["concept"] == "heart" and report["prompts"] == 28
    assert report["drift"] > 0  # a trained LoRA (lr 1e-3) moves the pixels of the toy model
    assert (tmp_path / "demo" / "eval" / "eval-grid.png").is_file()
