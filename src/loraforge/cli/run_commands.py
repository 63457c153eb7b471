"""Commands about a run and its inputs: `report` (rewrite a run's report.html), `plan` (memory and time estimate),
`dataset check` and `dataset caption`. Argparse only at import time; each command imports its layer when it runs."""

from __future__ import annotations

from pathlib import Path

from ..families import FAMILY_NAMES as FAMILY_CHOICES


# ------------------------------------------------------------------------------------------------------ report
def add_report(sub) -> None:
    p = sub.add_parser("report", help="(re)write a run folder's report.html from its metrics.jsonl",
        description=(
            "Write RUN_DIR/report.html: loss (raw and smoothed), lr per group, grad norm, Prodigy's d, the "
            "sample images by step, the save-time consumer check, the resolved config, timings and memory. "
            "Training writes it at the end of every run; this rewrites it (e.g. for a run still going, or "
            "killed)."
        ))
    p.add_argument("run_dir", help="a run folder (output.output_dir / output.output_name)")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from ..errors import RunFolderError
    from ..training.metrics import METRICS_FILE
    from ..training.report import write_report

    run_dir = Path(args.run_dir)
    if not (run_dir / METRICS_FILE).is_file():
        raise RunFolderError(f"{run_dir}: no {METRICS_FILE} in it; give a run folder that training wrote "
                             "(output.output_dir / output.output_name)")
    print(write_report(run_dir))
    return 0


# -------------------------------------------------------------------------------------------------------- plan
def add_plan(sub) -> None:
    p = sub.add_parser("plan", help="estimate peak memory and step time; propose settings that fit --vram GiB",
        description=(
            "Estimate a run's peak memory and step time from its config: the model's architecture on the meta "
            "device (no weights read), the adapter's targets, the activations autograd keeps, the step's FLOPs "
            "(docs/plan.md says where each figure comes from). With --vram, propose changes until it fits."
        ))
    p.add_argument("config", nargs="?", help="TOML config file (as for `loraforge train`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one option (repeatable)")
    p.add_argument("--vram", type=float, metavar="GIB", help="the card's memory in GiB, e.g. 12: propose settings "
                                                              "that fit it (5 %% left free)")
    p.add_argument("--family", choices=FAMILY_CHOICES, help="plan for this family's full-size model without "
                                                             "reading [model] (e.g. before downloading it)")
    p.add_argument("--cpu", action="store_true", help="estimate a CPU run (fp32, the process's resident memory)")
    p.add_argument("--tflops", type=float, help="the device's effective TFLOP/s for the step time (default: 15.5, "
                                                "an RTX 4090 running kohya's SDXL LoRA; CPU: 0.0028)")
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args) -> int:
    import json
    import sys
    from types import SimpleNamespace

    from ..config import load_config
    from ..errors import ConfigError
    from ..families import family
    from ..training.estimate import estimate, propose, table
    from ..training.plan import plan_run

    cfg = load_config(args.config, args.overrides)
    if args.vram is not None and (args.vram <= 0 or args.cpu):
        raise ConfigError(f"--vram {args.vram:g}: give the card's memory in GiB (more than 0), without --cpu")
    model = None
    if args.family:
        fam = family(args.family)
        model = SimpleNamespace(family=fam, is_tiny=False, native_size=fam.resolution)
    plan = plan_run(cfg, model=model)
    if args.vram is not None:
        proposal = propose(cfg, plan, args.vram, tflops=args.tflops)
        rows = [("as configured", proposal.base), *proposal.steps]
    else:
        proposal, rows = None, [("as configured", estimate(cfg, plan, cuda=not args.cpu, tflops=args.tflops))]
    if args.json:
        print(json.dumps({"family": plan.family.name, "tiny": plan.is_tiny, "resolution": list(plan.resolution),
                          "max_steps": plan.max_steps, "vram_gib": args.vram,
                          "fits": proposal.fits if proposal else None,
                          "estimates": [{"change": text, **e.as_dict()} for text, e in rows]}, indent=2))
        return 0
    print(plan.describe(cfg).splitlines()[0])
    print(table(rows, args.vram))
    last = rows[-1][1]
    print(f"\nestimated peak {last.peak_gib:.2f} GiB ({'CUDA allocated + ~1 GiB context' if last.device == 'cuda' else 'process RSS'}), "
          f"{last.step_s:.3g} s/step, {plan.max_steps} steps ≈ {last.step_s * plan.max_steps / 60:.1f} min")
    if proposal:
        if proposal.steps and proposal.fits:
            print(f"to fit {args.vram:g} GiB: " + "; ".join(text for text, _ in proposal.steps))
        elif not proposal.fits:
            loading = last.loading_gib + last.overhead_gib
            why = (f": the text encoders and the VAE alone, while the caches fill, take {loading:.2f} GiB"
                   if loading > last.training_gib else "")
            print(f"no set of the usual changes fits {args.vram:g} GiB{why}; a smaller resolution or a larger card",
                  file=sys.stderr)
            return 1
    return 0


# ----------------------------------------------------------------------------------------------------- dataset
def add_dataset(sub) -> None:
    p = sub.add_parser("dataset", help="check or caption a folder of training images",
                       description="Work on a folder of training images: `check` it, `caption` it.")
    tasks = p.add_subparsers(dest="dataset_command", metavar="TASK", required=True)
    c = tasks.add_parser("check", help="summary of a training folder; exit 2 on what would stop training",
        description=(
            "Read a training folder as training would: every image opened and decoded, its size and aspect "
            "bucket, its caption (metadata.jsonl, else the sidecar). Prints the summary; lists unreadable or "
            "too small images, missing or empty captions, duplicates, skipped files. Exit code 2 when "
            "something would stop training."
        ))
    c.add_argument("dir", help="folder of training images")
    c.add_argument("--config", help="take the [dataset] options (buckets, min_image_size, caption_extension, "
                                    "instance_prompt...) and the resolution from this training config")
    c.add_argument("--resolution", type=int, help="training side in px (default: the config's, else 512)")
    c.add_argument("--caption-extension", help="sidecar extension (default: the config's, else .txt)")
    c.add_argument("--buckets", action="store_true", help="aspect-ratio buckets (dataset.enable_bucket = true)")
    c.set_defaults(func=cmd_dataset_check)
    a = tasks.add_parser("caption", help="caption images with a local BLIP / Florence-2 / GIT model",
        description=(
            "Caption the images of DIR that have no caption with an image-to-text model from a local folder "
            "(BLIP, Florence-2, GIT: what transformers loads with AutoModelForImageTextToText), writing .txt "
            "sidecars or metadata.jsonl rows. Existing captions are kept unless --overwrite."
        ))
    a.add_argument("dir", help="folder of training images")
    a.add_argument("--model", required=True, metavar="PATH", help="local folder of the captioning model")
    a.add_argument("--trigger", metavar="TOK", help="put this first in every caption, e.g. 'sks dog'")
    a.add_argument("--overwrite", action="store_true", help="replace existing captions too")
    a.add_argument("--format", choices=["txt", "jsonl"], default="txt",
                   help="txt: one sidecar per image (default); jsonl: rows of DIR/metadata.jsonl")
    a.add_argument("--prompt", help="text the model continues (BLIP: e.g. 'a photo of'; Florence-2: a task such as "
                                    "'<DETAILED_CAPTION>', default '<CAPTION>')")
    a.add_argument("--max-new-tokens", type=int, default=40, help="longest caption in tokens (default 40)")
    a.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    a.add_argument("-v", "--verbose", action="store_true")
    a.set_defaults(func=cmd_dataset_caption)


def cmd_dataset_check(args) -> int:
    import sys

    from ..config import load_config
    from ..config.dataset import DatasetConfig
    from ..data.summary import summarize_folder
    from ..errors import DataError

    if args.config:
        cfg = load_config(args.config)
        d, resolution = cfg.dataset, cfg.dataset.size
    else:
        d, resolution = DatasetConfig(), None
    update = {"instance_dir": args.dir}
    if args.caption_extension:
        update["caption_extension"] = args.caption_extension
    if args.buckets:
        update["enable_bucket"] = True
    d = d.model_copy(update=update)
    summary = summarize_folder(Path(args.dir), d, args.resolution or resolution or 512)
    print("\n".join(summary.lines()))
    for note in summary.notes:
        print(f"note: {note}")
    if summary.problems:
        print(file=sys.stderr)
        raise DataError(f"{len(summary.problems)} problem(s) in {args.dir} would stop training; fix them (or set "
                        "dataset.skip_bad_images = true to train without unusable images)", summary.problems)
    print("OK: training can read every image and caption")
    return 0


def cmd_dataset_caption(args) -> int:
    from ..tools.caption import caption_folder

    result = caption_folder(args.dir, args.model, trigger=args.trigger, overwrite=args.overwrite, fmt=args.format,
                            prompt=args.prompt, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    for path, caption in result.written.items():
        print(f"{path.name}: {caption}")
    where = f" into {result.target}" if result.target else " (sidecars)"
    print(f"captioned {len(result.written)} image(s){where}; kept {len(result.kept)} existing caption(s)"
          + ("" if args.overwrite or not result.kept else " (--overwrite replaces them)"))
    for note in result.notes:
        print(f"note: {note}")
    return 0


RUN_COMMANDS = [add_report, add_plan, add_dataset]
