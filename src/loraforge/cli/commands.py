"""Subcommands. Each `add_*` registers one; `run` executes it with user errors turned into clear messages."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ..families import FAMILY_NAMES
from .common import quiet_progress
from .eval_command import add_eval
from .import_command import add_import
from .run_commands import RUN_COMMANDS
from .tools import TOOLS  # the LoRA tools (argparse only at import time)
from .ui_command import add_ui


def _quiet_libraries() -> None:
    """Keep the console for loraforge's own progress: no per-shard bars or info chatter from the libraries."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*torchvision.*")
    # bitsandbytes (imported by peft when installed) warns on CPUs with AVX512-BF16 that its optional 4-bit kernels
    # package is missing; loraforge uses no 4-bit kernels.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


class _StderrHandler(logging.StreamHandler):
    """A console handler that writes to whatever `sys.stderr` is when a record comes (not the stream of the moment
    it was made): `loraforge.cli.main` may run several times in one process, under callers that swap stderr."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property always answers sys.stderr
        pass


def _setup_logging(verbose: bool = False) -> None:
    logger = logging.getLogger("loraforge")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def run(args: argparse.Namespace) -> int:
    """Run a subcommand. A `LoraforgeError` (a user error) prints its message and exits 2 without a traceback; with
    `--debug` the traceback is shown too. Anything else is a bug and keeps its traceback."""
    _quiet_libraries()
    _setup_logging(getattr(args, "verbose", False))
    from ..errors import ConfigError, LoraforgeError

    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("\ninterrupted. Checkpoints already written are complete; continue with --set training.resume=latest",
              file=sys.stderr)
        return 130
    except LoraforgeError as e:
        if getattr(args, "debug", False):
            import traceback

            traceback.print_exc()
        print("config error:" if isinstance(e, ConfigError) else f"error: {e}", file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        return e.exit_code


# ------------------------------------------------------------------------------------------------------- train
def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a LoRA from a TOML config", description="Train a LoRA from a TOML config.")
    p.add_argument("config", nargs="?", help="TOML config file (see docs/config.md); omit to use only --set values")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one option, e.g. --set training.max_train_steps=200 (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the config, the model and every image; print the resolved config and the run plan "
                        "(resolution, steps, epochs, warm-up); stop")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from ..config import dump_config, load_config

    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        return _dry_run(cfg, dump_config)
    from ..training.trainer import Trainer

    quiet_progress()
    result = Trainer(cfg).run()
    _print_result(result)
    return 0


def _dry_run(cfg, dump_config) -> int:
    """Resolve the run plan as training will (the model's family without loading its weights, every image opened),
    run training's pre-flight checks (paths, prompt files, output folder, disk) and print it with the resolved
    config. Nothing is written."""
    from ..training.plan import plan_run
    from ..training.preflight import check_inputs, disk_note

    notes = check_inputs(cfg)  # the checks training runs before its first step (the model path first)
    plan = plan_run(cfg, num_processes=int(os.environ.get("WORLD_SIZE", "1")))
    notes.append(disk_note(cfg, plan.family.name))
    print(dump_config(cfg))
    print("\n".join(f"# {line}" for line in plan.describe(cfg).splitlines() + notes), file=sys.stderr)
    print(f"# {plan.num_train_images + plan.num_reg_images} images OK", file=sys.stderr)
    return 0


def _print_result(result) -> None:
    if not result.is_main_process:
        return
    f = result.files
    print(f"\ndone: {result.steps} steps, run folder {result.run_dir}")
    if f.kohya:
        print(f"  AUTOMATIC1111 / ComfyUI: {f.kohya}  (copy into models/Lora; prompt <lora:{f.kohya.stem}:1>)")
    if f.diffusers:
        print(f"  diffusers: {f.diffusers}  (pipe.load_lora_weights(\"{f.diffusers.parent}\"))")
    if result.samples:
        print(f"  samples: {result.samples[0].parent}")


# ------------------------------------------------------------------------------------------------------- demo
def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="train on the embedded tiny SD 1.5 and SDXL with the shipped images (~1 min, CPU)",
        description=(
            "Train the embedded tiny SD 1.5 and SDXL models on the shipped demo images, on the CPU in "
            "about a minute, then check the files A1111, ComfyUI and diffusers would load. Nothing is "
            "downloaded."
        ))
    p.add_argument("--output-dir", default="output/demo", help="where the two runs go (default output/demo)")
    p.add_argument("--steps", type=int, default=100, help="steps per model (default 100)")
    p.add_argument("--sample-steps", type=int, default=20, help="denoising steps of each sample image (default 20)")
    p.add_argument("--concept-steps", type=int, default=300, help="steps of the toy model's concept LoRA (default 300)")
    p.add_argument("--tiny", action="store_true", help="train the tiny random-weight models only (no toy model)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_demo)


def _concept_demo(args) -> None:
    from ..tools.concept_demo import concept_demo

    print(f"\n== toy SD 1.5 (pretrained on the toy world): teach it a heart called TOK, {args.concept_steps} steps ==")
    demo = concept_demo(Path(args.output_dir) / "toy-heart", steps=args.concept_steps, eval_steps=args.sample_steps)
    r = demo.report
    print(f"\nLoRA: {demo.lora}\n{r.table()}")
    print(f"\n'a TOK on a green background': the base model draws the heart in {100 * r.base['concept_score']:.0f} % "
          f"of the images, with the LoRA in {100 * r.lora_scores['concept_score']:.0f} %. Before/after grid: {r.grid}")


def cmd_demo(args) -> int:
    import time

    from ..config import load_config
    from ..models import toy
    from ..training.trainer import Trainer

    quiet_progress()
    t0 = time.time()
    families = ("sd15", "sdxl")
    if not args.tiny and toy.WEIGHTS.is_file():
        _concept_demo(args)
        families = ("sdxl",)  # SD 1.5 was the toy model; the tiny SDXL still shows the SDXL files and their check
    elif not args.tiny:
        print("note: the pretrained toy model is not in this install (docs/toy-world.md), so the demo trains the "
              "tiny random-weight models: it shows the files and their checks, not learning")
    for family in families:
        cfg = load_config(None, [
            f"model.family={family}",
            f"output.output_dir={args.output_dir!r}",
            f"output.output_name=tiny-{family}",
            "output.overwrite=true",
            f"training.max_train_steps={args.steps}",
            "network.rank=8",
            "optimizer.learning_rate=1e-3",
            f"sampling.num_inference_steps={args.sample_steps}",
            "sampling.validation_prompts=['a photo of sks robot on the moon', 'a photo of sks robot in a forest']",
        ])
        print(f"\n== {family}: tiny model, {args.steps} steps ==")
        result = Trainer(cfg).run()
        _print_result(result)
    print(f"\ndemo finished in {time.time() - t0:.0f} s. Train your own: loraforge train CONFIG.toml (README).")
    return 0


# ------------------------------------------------------------------------------------------------------- docs
def add_config_docs(sub) -> None:
    p = sub.add_parser("config-docs", help="print (or write) the config reference generated from the schema",
        description=(
            "Print the config reference (every section and key, its type, default and description), "
            "generated from the schema; --write updates docs/config.md."
        ))
    p.add_argument("--write", metavar="PATH", help="write to PATH instead of printing")
    p.set_defaults(func=cmd_config_docs)


def cmd_config_docs(args) -> int:
    from ..config.docs import render_config_docs
    from ..utils.files import write_text_atomic

    text = render_config_docs()
    if args.write:
        write_text_atomic(args.write, text)
    else:
        print(text)
    return 0


# ------------------------------------------------------------------------------------------------------- check
def add_check(sub) -> None:
    p = sub.add_parser("check", help="will ComfyUI, A1111 and diffusers load this LoRA file exactly?",
        description=(
            "Load a LoRA file the way ComfyUI, AUTOMATIC1111 and diffusers do (models of their key rules)"
            " and report, per consumer, how many modules map and which keys would be dropped. Exit code 1"
            " when a file would not load exactly (dropped keys, NaN/Inf tensors), 2 when it cannot be "
            "read."
        ))
    p.add_argument("files", nargs="+", help=".safetensors LoRA / LyCORIS files (ours or from elsewhere)")
    p.add_argument("--family", choices=FAMILY_NAMES, help="base model family (default: detected)")
    p.add_argument("--model", metavar="DIFFUSERS_FOLDER",
                   help="check against this model's own architecture (its configs; no weights are read) instead of "
                        "the full-size family, e.g. for a LoRA of the embedded tiny models")
    p.set_defaults(func=cmd_check)


def cmd_check(args) -> int:

    from ..errors import LoraforgeError, ToolError
    from ..formats.check import check_file

    arch = {}
    if args.model:
        from ..families.detect import detect_family_from_folder, folder_architecture

        folder = Path(args.model)
        if not (folder / "model_index.json").is_file():
            raise ToolError(f"--model {folder}: not a diffusers folder (no model_index.json)")
        args.family = args.family or detect_family_from_folder(folder)
        arch = folder_architecture(folder)
    worst = 0
    for path in args.files:
        try:
            report = check_file(path, args.family, **arch)
        except LoraforgeError as e:  # one message per bad file; the others are still checked
            print(f"error: {e}", file=sys.stderr)
            worst = 2
            continue
        print(f"{path}: {report.summary()}")
        print(str(report))
        if report.broken:
            worst = max(worst, 1)
    return worst


def add_presets(sub) -> None:
    p = sub.add_parser("presets", help="print the recipe presets (preset = \"face\" | \"object\" | \"style\")",
        description=(
            "Print the recipe presets (face, object, style) as TOML: the options each preset sets, to "
            'copy into a config or to select with preset = "...".'
        ))
    p.set_defaults(func=cmd_presets)


def cmd_presets(args) -> int:
    from ..config.presets import presets_toml

    print(presets_toml())
    return 0


REGISTRY = [add_train, add_demo, add_config_docs, add_check, add_presets, add_import, add_eval, add_ui] + TOOLS + RUN_COMMANDS
