"""`loraforge eval`: the prompt set, the scoring, and a run end to end (tiny model, real judge)."""

from __future__ import annotations

import json

import pytest

from loraforge.errors import OutputExistsError, ToolError
from loraforge.tools.evaluate import evaluate, pixel_drift, prompt_set, score
from loraforge.world.scene import HELD_OUT


@pytest.mark.parametrize("concept", sorted(HELD_OUT))
def test_prompt_set_pairs_each_trigger_prompt_with_a_plain_one(concept):
    prompts = prompt_set(concept, "zwx", seeds=2)
    groups = {g: [p for p in prompts if p.group == g] for g in ("concept", "no_trigger", "base")}
    assert len(groups["concept"]) == len(groups["no_trigger"]) == 16 and len(groups["base"]) == 12
    attribute, value = HELD_OUT[concept]
    for with_t, plain in zip(groups["concept"], groups["no_trigger"]):
        assert "zwx" in with_t.prompt and "zwx" not in plain.prompt and with_t.seed == plain.seed
        assert with_t.expect[attribute] == value and plain.expect.get(attribute) != value
        assert f"on a {with_t.expect['background']} background" in with_t.prompt
    assert prompt_set(concept, "zwx", seeds=2) == prompts  # fixed: the same set on every call


def test_unknown_concept_is_named():
    with pytest.raises(ToolError, match="held-out concepts are heart, striped, outlined"):
        prompt_set("triangle", "TOK")


def _reads(prompts, concept_shows: int, background_right: bool = True):
    """Judge readings that show the concept on the first `concept_shows` concept prompts only."""
    reads, seen = [], 0
    for p in prompts:
        r = {"shape": "circle", "colour": "red", "background": "white", "position": "center", "size": "large",
             "fill": "filled"}
        r.update({k: v for k, v in p.expect.items()})
        attribute, value = HELD_OUT["heart"]
        if p.group == "concept":
            if seen >= concept_shows:
                r[attribute] = "circle"
            seen += 1
            if not background_right:
                r["background"] = "white" if p.expect["background"] != "white" else "red"
        reads.append(r)
    return reads


def test_score_counts_concept_fidelity_leakage_and_base_accuracy():
    prompts = prompt_set("heart", "TOK", seeds=1)
    perfect = score(prompts, _reads(prompts, concept_shows=8), "heart")
    assert perfect["concept_score"] == 1.0 and perfect["fidelity"] == 1.0 and perfect["leakage"] == 0.0
    assert perfect["base_accuracy"] == {a: 1.0 for a in ("shape", "colour", "background", "position", "size")}
    half = score(prompts, _reads(prompts, concept_shows=4, background_right=False), "heart")
    assert half["concept_score"] == 0.5 and half["fidelity"] == 0.0 and half["concept_and_fidelity"] == 0.0
    leaky = _reads(prompts, concept_shows=8)
    for p, r in zip(prompts, leaky):
        if p.group == "no_trigger":
            r["shape"] = "heart"
    assert score(prompts, leaky, "heart")["leakage"] == 1.0


def test_pixel_drift_is_zero_for_equal_images_and_one_for_inverted():
    from PIL import Image

    black, white = Image.new("RGB", (8, 8), "black"), Image.new("RGB", (8, 8), "white")
    assert pixel_drift([black], [black]) == 0.0
    assert pixel_drift([black, black], [white, black]) == 0.5


def test_eval_end_to_end_on_the_tiny_model(trained, tiny_models, tmp_path):
    """A LoRA whose up weights are zero changes nothing (drift 0, equal scores); the trained one moves pixels."""
    from safetensors.torch import load_file, save_file

    from loraforge.tools.common import load_sd_model

    t = trained["sd15"]
    sd = load_file(str(t.kohya))
    zero = tmp_path / "zero.safetensors"
    save_file({k: v * 0 if "lora_up" in k else v for k, v in sd.items()}, str(zero))
    quick = dict(steps=2, seeds=1, sampler="ddim")
    report = evaluate(load_sd_model(str(t.model_dir)), zero, concept="heart", out_dir=tmp_path / "z", **quick)
    assert report.drift == 0.0 and report.base == report.lora_scores and report.trigger == "TOK"
    written = json.loads((tmp_path / "z" / "eval.json").read_text())
    assert written["lora_scores"] == report.lora_scores and written["prompts"] == 28  # 8 concept + 8 no-trigger + 12 base
    from PIL import Image

    assert Image.open(tmp_path / "z" / "eval-grid.png").size == (8 * 64, 8 * 64)  # 4 rows of 8 prompts, each as base then LoRA
    moved = evaluate(load_sd_model(str(t.model_dir)), t.kohya, concept="heart", **quick)
    assert moved.drift > 0.0
    with pytest.raises(OutputExistsError, match="exists"):
        evaluate(load_sd_model(str(t.model_dir)), zero, out_dir=tmp_path / "z", **quick)
