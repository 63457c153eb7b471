"""`loraforge eval`: does a LoRA (and its embeddings) teach the toy model its concept, and what else did it move?

A fixed prompt set is generated twice, with the base model and with the LoRA applied, from the same seeds, and the
world's judge (`world.judge`) reads every image:

* **concept** prompts hold the trigger ("a TOK on a green background" for a new shape, "a TOK circle on a green
  background" for a new fill): the *concept score* is the share of images that show the concept, the *fidelity*
  the share that also show what the rest of the prompt asks (the background, the colour);
* **no-trigger** prompts are the same prompts with a base shape or no style in place of the trigger: the *leakage*
  is the share that show the concept anyway;
* **base** prompts are full captions of the base world ("a large red circle on a blue background, top left"): the
  judge's accuracy on them with and without the LoRA, and the mean pixel change (*drift*, 0 = untouched, 1 = every
  pixel inverted) over the no-trigger and base prompts, say how much of the base model's knowledge moved.

Everything but the generation is plain counting, so the numbers are exact for the images written to the grid.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from PIL import Image

from ..errors import ToolError
from ..formats.embeddings import EMBEDDINGS_SUFFIX
from ..sampling.generate import SampleRequest, generate, make_grid
from ..sampling.samplers import normalize_sampler
from ..utils.files import write_text_atomic
from ..world.judge import load_judge
from ..world.scene import BASE_SHAPES, COLOUR_NAMES, HELD_OUT, caption, scenes
from .common import LoraSpec, apply_lora_files, check_output, find_lora_file
from .sample import EmbeddingSpec, load_embedding

BASE_ATTRIBUTES = ("shape", "colour", "background", "position", "size")
_BACKGROUNDS = ("green", "blue", "yellow", "black")


@dataclass(frozen=True)
class EvalPrompt:
    group: str  # "concept", "no_trigger" or "base"
    prompt: str
    expect: dict  # attribute -> the value the prompt asks for
    seed: int


def prompt_set(concept: str, trigger: str, *, seeds: int = 2, base_prompts: int = 12) -> list[EvalPrompt]:
    """The fixed prompts for `concept` (a key of `world.scene.HELD_OUT`), `seeds` images each."""
    if concept not in HELD_OUT:
        raise ToolError(f"--concept {concept!r}: the toy world's held-out concepts are {', '.join(HELD_OUT)}")
    attribute, value = HELD_OUT[concept]
    rng = random.Random(f"eval-{concept}")
    out = []
    for i, bg in enumerate(_BACKGROUNDS):
        colour = rng.choice([c for c in COLOUR_NAMES if c != bg])
        shape = BASE_SHAPES[i % len(BASE_SHAPES)]
        if attribute == "shape":  # the trigger is the noun
            pairs = [(f"a {trigger} on a {bg} background", f"a {shape} on a {bg} background", {}, {"shape": shape}),
                     (f"a {colour} {trigger} on a {bg} background", f"a {colour} {shape} on a {bg} background",
                      {"colour": colour}, {"shape": shape, "colour": colour})]
        else:  # the trigger is a style word before a base shape
            pairs = [(f"a {trigger} {shape} on a {bg} background", f"a {shape} on a {bg} background",
                      {"shape": shape}, {"shape": shape}),
                     (f"a {trigger} {colour} {shape} on a {bg} background", f"a {colour} {shape} on a {bg} background",
                      {"shape": shape, "colour": colour}, {"shape": shape, "colour": colour})]
        for with_trigger, without, expect, expect_plain in pairs:
            for s in range(seeds):
                seed = 1000 * len(out) + s
                out.append(EvalPrompt("concept", with_trigger, {attribute: value, "background": bg, **expect}, seed))
                out.append(EvalPrompt("no_trigger", without, {"background": bg, **expect_plain}, seed))
    for k, scene in enumerate(scenes(4242, base_prompts)):
        expect = {a: getattr(scene, a) for a in BASE_ATTRIBUTES}
        out.append(EvalPrompt("base", caption(scene), expect, 7000 + k))
    return out


def _share(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def score(prompts: list[EvalPrompt], reads: list[dict], concept: str) -> dict:
    """The scores of one set of judged images (`reads[i]` is the judge's reading of `prompts[i]`'s image)."""
    attribute, value = HELD_OUT[concept]
    concept_reads = [(p, r) for p, r in zip(prompts, reads) if p.group == "concept"]
    plain_reads = [(p, r) for p, r in zip(prompts, reads) if p.group == "no_trigger"]
    base_reads = [(p, r) for p, r in zip(prompts, reads) if p.group == "base"]
    shows = [r[attribute] == value for _, r in concept_reads]
    faithful = [all(r[a] == v for a, v in p.expect.items() if a != attribute) for p, r in concept_reads]
    return {
        "concept_score": _share(shows),
        "fidelity": _share(faithful),
        "concept_and_fidelity": _share([a and b for a, b in zip(shows, faithful)]),
        "leakage": _share([r[attribute] == value for _, r in plain_reads]),
        "no_trigger_accuracy": _share([all(r[a] == v for a, v in p.expect.items()) for p, r in plain_reads]),
        "base_accuracy": {a: _share([r[a] == p.expect[a] for p, r in base_reads]) for a in BASE_ATTRIBUTES},
    }


def pixel_drift(before, after) -> float:
    """Mean absolute pixel change between two lists of same-size images, 0..1."""
    import numpy as np

    diffs = [np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean() / 255.0
             for a, b in zip(before, after)]
    return round(float(np.mean(diffs)), 4) if diffs else 0.0


@dataclass
class EvalReport:
    lora: str
    concept: str
    trigger: str
    base: dict
    lora_scores: dict
    drift: float
    prompts: int
    settings: dict = field(default_factory=dict)
    grid: str | None = None

    def table(self) -> str:
        rows = [("concept score", "concept_score"), ("fidelity", "fidelity"), ("concept + fidelity", "concept_and_fidelity"),
                ("leakage (no trigger)", "leakage"), ("no-trigger accuracy", "no_trigger_accuracy")]
        lines = [f"{'':24} {'base model':>10} {'with LoRA':>10}"]
        for label, key in rows:
            lines.append(f"{label:24} {_pct(self.base[key]):>10} {_pct(self.lora_scores[key]):>10}")
        for a in BASE_ATTRIBUTES:
            lines.append(f"{'base prompts: ' + a:24} {_pct(self.base['base_accuracy'][a]):>10} "
                         f"{_pct(self.lora_scores['base_accuracy'][a]):>10}")
        lines.append(f"{'drift (pixels, 0-1)':24} {'':>10} {self.drift:>10.4f}")
        return "\n".join(lines)


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.0f} %"


def run_files(path) -> tuple[Path | None, list[Path]]:
    """The LoRA file of a run folder or file, and the run's embedding files next to it. A run of textual inversion
    alone (`network.algo = "none"`) has embeddings and no LoRA file: (None, embeddings)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    embeddings = sorted(folder.glob(f"*{EMBEDDINGS_SUFFIX}.safetensors"))
    if path.is_dir() and embeddings and not any(
            p for p in path.glob("*.safetensors") if not p.stem.endswith(EMBEDDINGS_SUFFIX)):
        return None, embeddings
    if path.is_file() and path.stem.endswith(EMBEDDINGS_SUFFIX):
        return None, [path]
    lora = find_lora_file(path)
    if not lora.is_file():
        raise ToolError(f"{path}: no such LoRA file, embeddings file or run folder")
    return lora, embeddings


def evaluate(model, lora_or_run, *, concept: str = "heart", trigger: str | None = None, out_dir=None,
             steps: int = 25, guidance_scale: float = 3.0, sampler: str = "ddim", seeds: int = 2, size: int = 64,
             overwrite: bool = False, allow_pickle: bool = False, base_images: dict | None = None,
             batch_size: int = 32) -> EvalReport:
    """Generate the prompt set with `model` (a loaded `SDModel`, patched in place) before and after applying the
    LoRA, judge both, and write `out_dir/eval.json` and `out_dir/eval-grid.png` when `out_dir` is given.
    `base_images`: a dict shared by evaluations of the SAME base model (the caller's promise); its images are kept
    there by prompt set and settings and generated once (the concept tests score several LoRAs of one model).
    `batch_size`: images generated at once (the toy world's 64 px images: the whole prompt set, 2.8x faster on
    the CPU than one by one)."""
    lora, embeddings = run_files(lora_or_run)
    if trigger is None:
        trigger = embeddings[0].stem if embeddings else "TOK"
    prompts = prompt_set(concept, trigger, seeds=seeds)
    if out_dir is not None:
        out_dir = Path(out_dir)
        for name in ("eval.json", "eval-grid.png"):
            check_output(out_dir / name, overwrite)
    base_req = SampleRequest("", "", size, size, steps, guidance_scale, 0, normalize_sampler(sampler))
    requests = [replace(base_req, prompt=p.prompt, seed=p.seed) for p in prompts]
    judge = load_judge()
    key = tuple(requests)
    before = base_images.get(key) if base_images is not None else None
    if before is None:
        before = generate(model, requests, batch_size=batch_size)
        if base_images is not None:
            base_images[key] = before
    if lora is not None:
        apply_lora_files(model, [LoraSpec(str(lora))], allow_pickle)
    for emb in embeddings:
        load_embedding(model, EmbeddingSpec(str(emb)), allow_pickle)
    after = generate(model, requests, batch_size=batch_size)
    base_scores, lora_scores = score(prompts, judge.read(before), concept), score(prompts, judge.read(after), concept)
    plain = [i for i, p in enumerate(prompts) if p.group != "concept"]
    report = EvalReport(
        lora=str(lora or embeddings[0]), concept=concept, trigger=trigger, base=base_scores, lora_scores=lora_scores,
        drift=pixel_drift([before[i] for i in plain], [after[i] for i in plain]), prompts=len(prompts),
        settings={"steps": steps, "guidance_scale": guidance_scale, "sampler": sampler, "seeds": seeds, "size": size,
                  "embeddings": [str(e) for e in embeddings]},
    )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        # rows of 8: each group's images with the base model, then the same prompts with the LoRA
        order = [i for g in ("concept", "no_trigger", "base") for i, p in enumerate(prompts) if p.group == g]
        cells = []
        for start in range(0, len(order), 8):
            chunk = order[start:start + 8]
            pad = [Image.new("RGB", before[0].size, "white")] * (8 - len(chunk))
            cells += [before[i] for i in chunk] + pad + [after[i] for i in chunk] + pad
        grid = out_dir / "eval-grid.png"
        make_grid(cells, cols=8).save(grid)
        report.grid = str(grid)
        write_text_atomic(out_dir / "eval.json", json.dumps(asdict(report), indent=1) + "\n")
    return report
