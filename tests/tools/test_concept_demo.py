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


def test_concept_demo_textual_inversion_alone_and_regularisation_images(random_toy, tmp_path):
    # a run of textual inversion alone has no LoRA file: the demo evaluates its embeddings (their file name is the
    # trigger); reg_images adds a captioned base-world subset with is_reg = true
    result = concept_demo(tmp_path / "ti", steps=2, images=2, eval_steps=2, reg_images=3,
                          overrides={"training.batch_size": 2, "network.algo": "none",
                                     "training.train_text_encoder_ti": True})
    assert result.lora.name == "heart_emb.safetensors" and result.lora.is_file()
    report = json.loads((tmp_path / "ti" / "eval" / "eval.json").read_text())
    assert report["trigger"] == "heart_emb" and report["settings"]["embeddings"] == [str(result.lora)]
    assert len(list((tmp_path / "ti" / "reg").glob("*.txt"))) == 3
    config = (result.run_dir / "config.toml").read_text()
    assert "is_reg = true" in config and str(tmp_path / "ti" / "reg") in config
