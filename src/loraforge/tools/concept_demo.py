"""The concept demo: teach the pretrained toy model a concept it has never seen, and measure that it learnt it.

1. `world.dataset` writes a DreamBooth set of the held-out concept (8 hearts, "a TOK on a blue background, ...");
2. a LoRA trains on the toy model (`model = "toy"`) with the usual trainer;
3. `loraforge eval` generates the prompt set with the base model and with the LoRA: the base model cannot draw
   "a TOK" (concept score near 0), the LoRA can; the numbers and a before/after grid come back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config.load import set_path, validate_config
from ..models.toy import TOY_NAME
from ..training.trainer import Trainer
from ..world.dataset import write_concept_images, write_scenes
from .common import load_sd_model
from .evaluate import EvalReport, evaluate

# What the demo trains with, as config overrides (tested to learn the heart in about a minute on 2 CPU cores).
DEMO_SETTINGS = {
    "network.rank": 8,
    "network.alpha": 8,
    "optimizer.learning_rate": 5e-3,  # measured on the toy model: 1e-3 learns nothing in 150 steps, 1e-2 breaks it
    "training.batch_size": 4,
    "sampling.at_end": False,
}


@dataclass
class DemoResult:
    run_dir: Path
    lora: Path
    report: EvalReport


def concept_demo(out_dir, *, concept: str = "heart", steps: int = 300, images: int = 8, model: str = TOY_NAME,
                 eval_steps: int = 20, seeds: int = 1, reg_images: int = 0,
                 overrides: dict | None = None, base_images: dict | None = None) -> DemoResult:
    """Write the concept's images, train a LoRA on `model`, evaluate it; everything under `out_dir`.

    `reg_images` > 0 adds that many captioned base-world images as regularisation images (prior preservation,
    kohya style: a subset with `is_reg = true`, each image with its own caption). `overrides` are config values by
    dotted key, on top of `DEMO_SETTINGS`. `base_images`: a dict shared by several demos of the same `model`, so the
    base model's images are generated once (`evaluate`'s `base_images`)."""
    out_dir = Path(out_dir)
    data = write_concept_images(out_dir / "data", concept, images, trigger="TOK", overwrite=True)
    settings = {
        "model.pretrained_model_name_or_path": model,
        "dataset.instance_dir": str(data),
        "output.output_dir": str(out_dir),
        "output.output_name": concept,
        "output.overwrite": True,
        "training.max_train_steps": steps,
        **DEMO_SETTINGS,
    }
    if reg_images:
        reg = write_scenes(out_dir / "reg", reg_images, overwrite=True)
        settings["dataset.subsets"] = [{"image_dir": str(reg), "is_reg": True}]
    settings.update(overrides or {})
    tree: dict = {}
    for key, value in settings.items():
        set_path(tree, key.split("."), value)
    cfg = validate_config(tree, "concept demo")
    result = Trainer(cfg).run()
    # with training.use_ema the EMA weights are scored; a run of textual inversion alone (network.algo = "none") has
    # no LoRA file: its folder holds the embeddings
    lora = result.files.extra.get("ema", result.files.kohya)
    report = evaluate(load_sd_model(model), lora or result.run_dir, base_images=base_images, concept=concept, out_dir=out_dir / "eval",
                      steps=eval_steps, seeds=seeds, overwrite=True)
    return DemoResult(result.run_dir, lora or result.files.embeddings, report)
