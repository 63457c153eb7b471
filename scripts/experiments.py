"""Rerun the seed guides' comparisons in the toy world: each variant trains the same concept LoRA on the toy model
(same images, seed and steps) and `loraforge eval` scores it. Writes `results.json` and `results.md` (the table
docs/experiments.md is made from).

    python scripts/experiments.py --out output/experiments                 # every group
    python scripts/experiments.py --out output/experiments --only rank,algorithm --steps 150

Each variant is a set of config overrides on top of the concept demo's settings (tools/concept_demo.py:
DEMO_SETTINGS: rank 8, AdamW lr 5e-3, batch 4), so a row's command is `loraforge train` with those `--set`s. The
base model's images are generated once for all rows, and a variant whose overrides equal an earlier row's (every
group's reference) reuses that row's scores instead of training again.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from loraforge.tools.concept_demo import DEMO_SETTINGS, concept_demo
from loraforge.utils.files import write_text_atomic

# group -> variant -> overrides. The first variant of a group is its reference.
EXPERIMENTS: dict[str, dict[str, dict]] = {
    "optimizer": {"AdamW lr 5e-3": {}, "Prodigy lr 1.0": {"optimizer.type": "prodigy", "optimizer.learning_rate": 1.0}},
    "min-SNR gamma": {"none": {}, "5": {"training.snr_gamma": 5.0}},
    "text conditioning": {
        "UNet LoRA only": {},
        "+ text-encoder LoRA": {"network.train_text_encoder": True},
        "+ pivotal tuning (new tokens)": {"training.train_text_encoder_ti": True},
    },
    "rank": {f"{r}": {"network.rank": r, "network.alpha": r} for r in (4, 8, 16, 32)},
    "algorithm": {**{a: ({} if a == "lora" else {"network.algo": a}) for a in ("lora", "locon", "loha", "lokr", "dora")},
                  # LoCon adapts k×k convolutions only where the targets name them: LyCORIS' default preset does
                  "locon, preset full (+ ResNet convs)": {"network.algo": "locon", "network.preset": "full"}},
    # at a fixed step count repeats change only what an epoch is (the shuffling), as in kohya
    "repeats": {"1": {}, "4": {"dataset.repeats": 4}},
    "caption dropout": {"0": {}, "0.1": {"dataset.caption_dropout_rate": 0.1}},
    "noise offset": {"0": {}, "0.1": {"training.noise_offset": 0.1}},
    "loss type": {
        "L2": {},
        "Huber (snr schedule)": {"training.loss_type": "huber"},
        "smooth L1 (snr schedule)": {"training.loss_type": "smooth_l1"},
        "L1": {"training.loss_type": "l1"},
    },
    "timestep weighting": {
        "none": {},
        "debiased estimation": {"training.debiased_estimation_loss": True},
        "soft min-SNR 5": {"training.snr_gamma": 5.0, "training.soft_min_snr": True},
        "P2 gamma 1": {"training.p2_gamma": 1.0},
    },
    "timestep sampling": {
        "uniform": {},
        "logit-normal": {"training.timestep_sampling": "logit_normal"},
        "beta 2/2": {"training.timestep_sampling": "beta"},
        "range 0-500": {"training.max_timestep": 500},
        "range 500-1000": {"training.min_timestep": 500},
    },
    # with EMA on, the concept demo scores `<name>-ema.safetensors` (the trained LoRA is the same in every row)
    "EMA": {"off": {}, "0.99": {"training.use_ema": True, "training.ema_decay": 0.99},
            "0.9": {"training.use_ema": True, "training.ema_decay": 0.9}},
    "text-encoder LoRA schedule": {
        "UNet LoRA only": {},
        "+ text-encoder LoRA, whole run": {"network.train_text_encoder": True},
        "+ text-encoder LoRA, first half": {"network.train_text_encoder": True, "training.train_text_encoder_frac": 0.5},
    },
    "ip noise gamma": {"0": {}, "0.1": {"training.ip_noise_gamma": 0.1},
                       "0.1 random strength": {"training.ip_noise_gamma": 0.1,
                                               "training.ip_noise_gamma_random_strength": True}},
}


def run_experiments(out: Path, groups: dict[str, dict[str, dict]], *, steps: int, eval_steps: int, seeds: int,
                    runner=concept_demo) -> list[dict]:
    """Train and evaluate every variant; one result row each (also written to `out/results.json` as it goes)."""
    rows: list[dict] = []
    done: dict[str, dict] = {}  # overrides (as JSON) -> the row that trained them
    base_images: dict = {}
    for group, variants in groups.items():
        for name, overrides in variants.items():
            key = json.dumps(overrides, sort_keys=True)
            if key in done:
                rows.append({**done[key], "group": group, "variant": name, "reused_from": done[key]["group"]})
                write_text_atomic(out / "results.json", json.dumps(rows, indent=1) + "\n")
                continue
            folder = out / _slug(group) / _slug(name)
            t0 = time.time()
            demo = runner(folder, steps=steps, eval_steps=eval_steps, seeds=seeds, overrides=overrides,
                          base_images=base_images)
            r = demo.report
            rows.append({
                "group": group, "variant": name, "overrides": overrides, "steps": steps,
                "concept_score": r.lora_scores["concept_score"], "base_concept_score": r.base["concept_score"],
                "fidelity": r.lora_scores["fidelity"], "leakage": r.lora_scores["leakage"], "drift": r.drift,
                "seconds": round(time.time() - t0, 1), "grid": r.grid, "lora": str(demo.lora),
            })
            done[key] = rows[-1]
            write_text_atomic(out / "results.json", json.dumps(rows, indent=1) + "\n")
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| group | variant | concept score | fidelity | leakage | drift | seconds | overrides |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sets = " ".join(f"`--set {k}={json.dumps(v)}`" for k, v in r["overrides"].items()) or "(reference)"
        lines.append(f"| {r['group']} | {r['variant']} | {_pct(r['concept_score'])} | {_pct(r['fidelity'])} | "
                     f"{_pct(r['leakage'])} | {r['drift']:.4f} | {r['seconds']:.0f} | {sets} |")
    return "\n".join(lines) + "\n"


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.0f} %"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="output/experiments")
    p.add_argument("--only", help=f"comma-separated groups (default all: {', '.join(EXPERIMENTS)})")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--seeds", type=int, default=2)
    a = p.parse_args(argv)
    groups = EXPERIMENTS
    if a.only:
        wanted = [g.strip() for g in a.only.split(",")]
        unknown = [g for g in wanted if g not in EXPERIMENTS]
        if unknown:
            p.error(f"unknown group(s) {unknown}; choose from {list(EXPERIMENTS)}")
        groups = {g: EXPERIMENTS[g] for g in wanted}
    out = Path(a.out)
    rows = run_experiments(out, groups, steps=a.steps, eval_steps=a.eval_steps, seeds=a.seeds)
    text = (f"Concept LoRA (heart) on the toy model, {a.steps} steps; base settings {json.dumps(DEMO_SETTINGS)}.\n\n"
            + table(rows))
    write_text_atomic(out / "results.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
