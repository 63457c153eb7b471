"""`loraforge eval`: score a LoRA on the toy world (the work is done by `loraforge.tools.evaluate`)."""

from __future__ import annotations

import json

from .common import quiet_progress


def add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="score a LoRA trained on the toy world: concept score, prompt fidelity, drift (table, JSON, grid)",
        description=(
            "Generate a fixed prompt set with the base model and with the LoRA (and the run's embeddings), read "
            "every image with the toy world's judge, and report the concept score (does 'a TOK on a green "
            "background' show the concept?), the prompt fidelity (is the background green?), the leakage into "
            "prompts without the trigger, and the drift of the base model's knowledge. Writes eval.json and "
            "eval-grid.png (rows: base model, then with the LoRA) to --output-dir."
        ),
    )
    p.add_argument("lora", metavar="RUN_OR_LORA", help="a training run folder or a LoRA file")
    p.add_argument("--model", help="base model: diffusers folder or single file (default: the pretrained toy model)")
    p.add_argument("--concept", default="heart", help="the held-out concept the LoRA teaches: heart, striped or "
                                                      "outlined (default heart)")
    p.add_argument("--trigger", help="the trigger word in the prompts (default: the run's embedding name, else TOK)")
    p.add_argument("--seeds", type=int, default=2, help="images per prompt (default 2)")
    p.add_argument("--steps", type=int, default=25, help="sampling steps (default 25)")
    p.add_argument("--cfg", type=float, default=3.0, help="guidance scale (default 3: the toy model's best on held-out prompts, docs/toy-world.md)")
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--batch-size", type=int, default=32, help="images generated at once (default 32)")
    p.add_argument("-o", "--output-dir", help="write eval.json and eval-grid.png here")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.add_argument("--overwrite", action="store_true", help="replace an existing eval.json / eval-grid.png")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    from dataclasses import asdict

    from ..errors import ToolError
    from ..models.toy import toy_model_dir
    from ..tools.common import load_sd_model
    from ..tools.evaluate import evaluate

    quiet_progress()
    if args.seeds < 1 or args.steps < 1 or args.batch_size < 1:
        raise ToolError("--seeds, --steps and --batch-size must be 1 or more")
    model = load_sd_model(args.model or str(toy_model_dir()))
    report = evaluate(model, args.lora, concept=args.concept, trigger=args.trigger, out_dir=args.output_dir,
                      steps=args.steps, guidance_scale=args.cfg, sampler=args.sampler, seeds=args.seeds,
                      overwrite=args.overwrite, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(asdict(report), indent=1))
    else:
        print(f"{report.lora}: concept {report.concept!r}, trigger {report.trigger!r}, {report.prompts} prompts")
        print(report.table())
        if report.grid:
            print(f"grid: {report.grid}")
    return 0
