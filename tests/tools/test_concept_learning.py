"""Learning, measured: LoRAs trained on the pretrained toy model (`models/toy.py`) and scored by the world's judge
(`loraforge eval`). These catch training bugs, not file bugs: a trainer that stopped learning, a broken pivotal
tuning, prior preservation that does nothing, or a noise schedule at odds with the model would fail them.

They need the shipped toy weights (`src/loraforge/models/assets/toy-sd15.safetensors`, made by
`scripts/pretrain_toy.py --export`); an install without them skips this module with that reason.
"""

from __future__ import annotations

import pytest

from loraforge.models import toy
from loraforge.tools.concept_demo import concept_demo

pytestmark = pytest.mark.skipif(not toy.WEIGHTS.is_file(), reason="the pretrained toy model is not in this install "
                                "(build it with scripts/pretrain_toy.py --export; docs/toy-world.md)")

STEPS = 300  # the concept demo's default
EVAL = {"steps": STEPS, "eval_steps": 20, "seeds": 1}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each variant trained once and shared by the tests (a dict filled on first use)."""
    root, done, base_images = tmp_path_factory.mktemp("concept"), {}, {}

    def get(name: str, **kwargs):
        if name not in done:  # the base model's images are generated once for all variants
            done[name] = concept_demo(root / name, **EVAL, base_images=base_images, **kwargs).report
        return done[name]

    return get


def test_a_dreambooth_lora_teaches_the_held_out_shape(runs):
    r = runs("dreambooth")
    assert r.base["concept_score"] <= 0.25  # the base model has never seen a heart
    assert r.lora_scores["concept_score"] >= 0.70


def test_pivotal_tuning_the_embedding_alone_moves_the_score(runs):
    # textual inversion alone (no LoRA): only the new token's embedding trains
    r = runs("embedding", overrides={"network.algo": "none", "training.train_text_encoder_ti": True,
                                     "optimizer.embedding_lr": 5e-2})
    assert r.lora_scores["concept_score"] >= r.base["concept_score"] + 0.25


def test_prior_preservation_lowers_drift(runs):
    # diffusers' paired batches: each step holds the same 4 concept images as the plain run plus 4 class (base-world)
    # images, so the two runs see the concept equally often. Measured (2026-12-02): drift 0.107 (one thread) or 0.057
    # (two threads: the plain run's drift is that sensitive) -> 0.038 with prior preservation both ways; concept
    # 0.875 -> 0.25: at 300 steps preservation costs concept learning here (docs/toy-world.md)
    plain = runs("dreambooth")
    prior = runs("prior", reg_images=32, overrides={"dataset.prior_batches": "paired"})
    assert prior.drift <= 0.8 * plain.drift
    assert prior.lora_scores["concept_score"] > prior.base["concept_score"]  # and it still learns the concept


def test_a_noise_schedule_at_odds_with_the_model_scores_worse(runs):
    # the toy model predicts epsilon; training it as a v-prediction model teaches the LoRA the wrong target
    plain, broken = runs("dreambooth"), runs("broken", overrides={"model.prediction_type": "v_prediction"})
    assert broken.lora_scores["concept_score"] <= plain.lora_scores["concept_score"] - 0.3
