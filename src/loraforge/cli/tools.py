"""CLI of the tools around a LoRA: sample, merge, resize, extract, convert, inspect. Argparse only at import time;
each command imports its tool (torch, diffusers) when it runs. The work is done by `loraforge.tools.*`."""

from __future__ import annotations

import argparse
import math

from ..errors import ToolError
from ..families import FAMILY_NAMES
from ..utils.dtypes import PRECISIONS as DTYPES
from ..utils.dtypes import torch_dtype
from .common import quiet_progress


def number(text: str) -> float:
    """A finite number (argparse type): `nan` or `inf` for a scale, a weight or a threshold would write NaN."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number; give a number such as 0.5")
    return value


def non_negative(text: str) -> float:
    value = number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: give 0 or more")
    return value


def _dtype(name: str | None):
    return None if name is None else torch_dtype(name)


def _common(p, model: bool = True, pickle: bool = True, output: bool = True) -> None:
    if model:
        p.add_argument("--family", choices=["auto", *FAMILY_NAMES], default="auto",
                       help="base model family (default: detected; the embedded tiny model when no model is named)")
        p.add_argument("--config-dir", help="diffusers folder describing a single-file model (default: built in)")
    if pickle:
        p.add_argument("--allow-pickle", action="store_true",
                       help="read .bin/.pkl/.pt/.ckpt files (with torch's weights_only loader)")
    if output:
        p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("-v", "--verbose", action="store_true")


def _ckpt_flag(p) -> None:
    p.add_argument("--write-ckpt", action="store_true",
                   help="allow a pickle .ckpt output (A1111's {\"state_dict\": ...}); loading a pickle can run code, "
                        "so .safetensors is the default and the safer choice")


def _rank_args(p, what: str) -> None:
    p.add_argument("--rank", type=int, help=f"{what} rank (the cap when a rule below is given)")
    p.add_argument("--conv-rank", type=int, help="rank for 3x3 convolutions (default: --rank; 0 leaves them out)")
    rule = p.add_mutually_exclusive_group()
    rule.add_argument("--sv-ratio", type=number, metavar="R", help="keep singular values above σ_max / R")
    rule.add_argument("--sv-fro", type=number, metavar="P", help="smallest rank keeping the share P of ‖ΔW‖_F")
    rule.add_argument("--sv-cumulative", type=number, metavar="P", help="smallest rank keeping the share P of Σσ")
    rule.add_argument("--recipe", metavar="SPEC",
                      help="resize_lora recipe, e.g. fro_ckpt=1,thr=-3.55 (fro_ckpt/spn_ckpt need --base)")


def _to_flag(p, default: str) -> None:
    p.add_argument("--to", choices=["kohya", "diffusers", "comfyui"],
                   help=f"FLUX.1 output layout (default: {default}; comfyui = ComfyUI's native names); Stable "
                        "Diffusion LoRAs are always written in the kohya layout")


def _rule(args):
    from ..tools.svd import RankRule, parse_recipe

    if args.rank is not None and args.rank < 1:
        raise ToolError(f"--rank {args.rank}: a rank must be 1 or more")
    if args.conv_rank is not None and args.conv_rank < 0:
        raise ToolError(f"--conv-rank {args.conv_rank}: give 0 (no 3x3 convolutions) or more")

    for method in ("sv_ratio", "sv_fro", "sv_cumulative"):
        value = getattr(args, method, None)
        if value is None:
            continue
        flag = "--" + method.replace("_", "-")
        if method == "sv_ratio" and value < 1:
            raise ToolError(f"{flag} {value:g}: give 1 or more (singular values above σ_max / {value:g} are kept; "
                            "below 1 that keeps none)")
        if method != "sv_ratio" and not 0 < value <= 1:
            raise ToolError(f"{flag} {value:g}: a share, between 0 and 1 (0.95 keeps 95 %)")
        return RankRule(args.rank, args.conv_rank, method, value)
    recipe = parse_recipe(args.recipe) if getattr(args, "recipe", None) else {}
    return RankRule(args.rank, args.conv_rank, recipe=recipe)


# ------------------------------------------------------------------------------------------------------- sample
def add_sample(sub) -> None:
    p = sub.add_parser("sample", help="generate images with LoRA files and embeddings (txt2img / img2img)",
                       description="Generate images. PNGs carry A1111's `parameters` text chunk.")
    p.add_argument("--model", help="base model: hub id, diffusers folder or single file (default: embedded tiny)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the prompt")
    src.add_argument("--prompt-file", help="kohya prompt file: one prompt a line, --n --w --h --d --l --s --ss")
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:W]",
                   help="LoRA file (or a training run folder) with its strength: FILE, FILE:0.8, FILE:unet=0.6:te=0.9 "
                        "(repeatable)")
    p.add_argument("--unet-scale", type=number, default=1.0, help="multiplies every LoRA's UNet strength")
    p.add_argument("--te-scale", type=number, default=1.0, help="multiplies every LoRA's text-encoder strength")
    p.add_argument("--embedding", action="append", default=[], metavar="FILE[:TOKEN]",
                   help="textual-inversion embedding; its token defaults to the file name (repeatable)")
    p.add_argument("--sampler", default="euler_a", help="kohya sampler name (ddim, euler, euler_a, dpmsolver++, ...)")
    p.add_argument("--steps", type=int, default=None, help="default: the model's (25 SD, 28 FLUX.1 [dev], 4 [schnell])")
    p.add_argument("--cfg", type=number, default=None,
                   help="guidance scale; default: the model's (7 SD, 3.5 FLUX.1 [dev])")
    p.add_argument("--width", type=int, default=0, help="default: the model's resolution (img2img: the image's)")
    p.add_argument("--height", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=1, help="images per prompt (seeds seed, seed+1, ...)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images generated at once (default 1; prompts of the same size, steps and sampler batch)")
    p.add_argument("--init-image", help="img2img: the starting image")
    p.add_argument("--strength", type=number, default=0.75, help="img2img denoising strength (default 0.75)")
    p.add_argument("--clip-skip", type=int, help="text-encoder layers to skip, as training.clip_skip (1: penultimate "
                                               "layer of SD 1.x/2.x; default: none)")
    p.add_argument("--skip-unknown", action="store_true", help="apply a LoRA even if some of its keys match nothing")
    p.add_argument("-o", "--output-dir", default="samples",
                   help="where the PNGs go (default samples/); numbering goes on from the images already there")
    _common(p)
    p.set_defaults(func=cmd_sample)


def _embedding_spec(spec: str):
    from ..tools.sample import EmbeddingSpec

    path, sep, token = spec.rpartition(":")
    if not sep or not path or any(c in token for c in "/\\.") or not token:
        return EmbeddingSpec(spec)
    return EmbeddingSpec(path, token)


def cmd_sample(args) -> int:
    from ..tools.common import parse_lora_spec
    from ..tools.sample import build_requests, sample

    quiet_progress()
    requests = build_requests(args.prompt, args.prompt_file, negative_prompt=args.negative, sampler=args.sampler,
                              steps=args.steps, guidance_scale=args.cfg, width=args.width, height=args.height,
                              seed=args.seed, batch=args.batch, batch_size=args.batch_size)
    loras = [parse_lora_spec(s, args.unet_scale, args.te_scale) for s in args.lora]
    paths = sample(args.model, requests, args.output_dir, loras=loras,
                   embeddings=[_embedding_spec(e) for e in args.embedding], family=args.family,
                   init_image=args.init_image, strength=args.strength, clip_skip=args.clip_skip,
                   allow_pickle=args.allow_pickle, skip_unknown=args.skip_unknown, overwrite=args.overwrite,
                   config_dir=args.config_dir, batch_size=args.batch_size)
    for path in paths:
        print(path)
    return 0


# ------------------------------------------------------------------------------------------------------- merge
def add_merge(sub) -> None:
    p = sub.add_parser("merge", help="merge LoRA files into a model, LoRA with LoRA, checkpoint with checkpoint",
        description=(
            "Merge LoRA files into a model (into-model), LoRA files with each other (loras), or two "
            "checkpoints (checkpoints)."
        ))
    kinds = p.add_subparsers(dest="merge_kind", metavar="KIND", required=True)

    m = kinds.add_parser("into-model", help="bake LoRA files into a base model (single file or diffusers folder)",
        description=(
            "Bake LoRA files into a base model and write a single file or a diffusers folder that loads "
            "without the LoRA."
        ))
    m.add_argument("base", nargs="?", help="base model: a diffusers folder, a single file (FLUX.1: the transformer "
                   "file in BFL's layout, flux1-dev.safetensors) (default: the embedded tiny model of --family)")
    m.add_argument("--lora", action="append", required=True, metavar="FILE[:W]",
                   help="LoRA file with its strength: FILE, FILE:0.8, FILE:unet=0.6:te=0.9 (repeatable)")
    m.add_argument("--unet-scale", type=number, default=1.0)
    m.add_argument("--te-scale", type=number, default=1.0)
    m.add_argument("-o", "--output", required=True,
                   help="OUT.safetensors (original layout), a folder (diffusers), or OUT.ckpt with --write-ckpt")
    m.add_argument("--dtype", choices=DTYPES, help="precision of the written weights (default: as loaded)")
    m.add_argument("--skip-unknown", action="store_true", help="apply a LoRA even if some of its keys match nothing")
    _ckpt_flag(m)
    _common(m)
    m.set_defaults(func=cmd_merge_model)

    lo = kinds.add_parser("loras", help="LoRA with LoRA: concat (exact), svd (target rank), interpolate (cloneofsimo)",
        description=(
            "Merge LoRA files into one: concat (exact, ranks add up), svd (re-factored to a target rank) "
            "or interpolate (cloneofsimo's interpolation of two equal-rank files' factors)."
        ))
    lo.add_argument("loras", nargs="+", metavar="FILE[:W]", help="LoRA files with their weights")
    lo.add_argument("--mode", choices=["concat", "svd", "interpolate"], default="concat")
    lo.add_argument("--alpha", type=number, default=0.5, help="interpolate: (αA₁+(1−α)A₂)(αB₁+(1−α)B₂)ᵀ")
    _rank_args(lo, "svd: target")
    lo.add_argument("--base", help="model the files are for (resolves names; default: the embedded tiny model the "
                                   "files were trained on, else the family's full-size model)")
    lo.add_argument("-o", "--output", required=True)
    _to_flag(lo, "the first file's layout")
    lo.add_argument("--config-dir", help="FLUX: diffusers folder describing a --base transformer single file")
    lo.add_argument("--dtype", choices=DTYPES)
    lo.add_argument("--skip-unknown", action="store_true", help="merge even if some keys match no module")
    _common(lo, model=False)
    lo.add_argument("--family", choices=["auto", *FAMILY_NAMES], default="auto")
    lo.set_defaults(func=cmd_merge_loras)

    c = kinds.add_parser("checkpoints", help="A1111 checkpoint merger: weighted sum or add difference",
        description=(
            "Merge two checkpoints as A1111's checkpoint merger does: weighted sum, or add difference "
            "with a third model."
        ))
    c.add_argument("a", help="model A")
    c.add_argument("b", help="model B")
    c.add_argument("c", nargs="?", help="model C (add-difference: A + M·(B − C))")
    c.add_argument("-m", "--multiplier", type=number, default=0.5, help="M (weighted sum: (1−M)·A + M·B)")
    c.add_argument("--mode", choices=["weighted-sum", "add-difference"], default=None,
                   help="default: add-difference with three models, else weighted-sum")
    c.add_argument("-o", "--output", required=True,
                   help="OUT.safetensors, a folder (diffusers), or OUT.ckpt with --write-ckpt")
    c.add_argument("--dtype", choices=DTYPES, help="default: A's")
    _ckpt_flag(c)
    _common(c)
    c.set_defaults(func=cmd_merge_checkpoints)


def cmd_merge_model(args) -> int:
    from ..tools.common import parse_lora_spec
    from ..tools.merge import merge_into_model

    quiet_progress()
    loras = [parse_lora_spec(s, args.unet_scale, args.te_scale) for s in args.lora]
    out = merge_into_model(args.base, loras, args.output, family=args.family, dtype=_dtype(args.dtype),
                           allow_pickle=args.allow_pickle, skip_unknown=args.skip_unknown, overwrite=args.overwrite,
                           config_dir=args.config_dir, write_ckpt=args.write_ckpt)
    print(f"wrote {out}")
    return 0


def cmd_merge_loras(args) -> int:
    from ..tools.common import parse_weighted
    from ..tools.merge_loras import merge_loras

    quiet_progress()
    result = merge_loras([parse_weighted(s) for s in args.loras], args.output, mode=args.mode, rule=_rule(args),
                         alpha=args.alpha, base=args.base, family=args.family, dtype=_dtype(args.dtype),
                         allow_pickle=args.allow_pickle, skip_unknown=args.skip_unknown, overwrite=args.overwrite,
                         to=args.to, config_dir=args.config_dir)
    print("\n".join(result.lines()))
    return 0


def cmd_merge_checkpoints(args) -> int:
    from ..tools.merge import merge_checkpoints

    quiet_progress()
    mode = (args.mode or ("add-difference" if args.c else "weighted-sum")).replace("-", "_")
    out = merge_checkpoints(args.a, args.b, args.output, c=args.c, multiplier=args.multiplier, mode=mode,
                            family=args.family, dtype=_dtype(args.dtype), allow_pickle=args.allow_pickle,
                            overwrite=args.overwrite, config_dir=args.config_dir, write_ckpt=args.write_ckpt)
    print(f"wrote {out}")
    return 0


# ------------------------------------------------------------------------------------------------------- resize
def add_resize(sub) -> None:
    p = sub.add_parser("resize", help="re-rank a LoRA / LoCon by SVD (fixed rank, sv_ratio/fro/cumulative, recipes)",
        description=(
            "Re-rank a LoRA or LoCon by SVD of each module's ΔW: a fixed rank, or one chosen per module "
            "by sv_ratio, Frobenius share or cumulative share, or a recipe mixing them."
        ))
    p.add_argument("lora", help="the LoRA file")
    p.add_argument("-o", "--output", required=True)
    _to_flag(p, "the input's layout")
    _rank_args(p, "new")
    p.add_argument("--base", help="base model (needed by the fro_ckpt / spn_ckpt recipes)")
    p.add_argument("--dtype", choices=DTYPES, help="precision of the re-ranked tensors (default: as stored)")
    p.add_argument("-q", "--quiet", action="store_true", help="summary only, no per-module table")
    _common(p)
    p.set_defaults(func=cmd_resize)


def cmd_resize(args) -> int:
    from ..tools.resize import resize_lora

    quiet_progress()
    rule = _rule(args)
    if rule.rank is None and rule.method is None and not rule.recipe:
        raise ToolError("give --rank, a rule (--sv-ratio/--sv-fro/--sv-cumulative) or --recipe")
    result = resize_lora(args.lora, args.output, rule, base=args.base, family=args.family, dtype=_dtype(args.dtype),
                         allow_pickle=args.allow_pickle, overwrite=args.overwrite, config_dir=args.config_dir,
                         to=args.to)
    print("\n".join(result.lines(per_module=not args.quiet)))
    return 0


# ------------------------------------------------------------------------------------------------------- extract
def add_extract(sub) -> None:
    p = sub.add_parser("extract", help="extract a LoRA from (tuned − base) by SVD",
        description=(
            "Extract a LoRA from the difference between a fine-tuned model and its base, by SVD of each "
            "weight's difference."
        ))
    p.add_argument("--base", help="the base model (default: the embedded tiny model of --family)")
    p.add_argument("--tuned", required=True, help="the fine-tuned model")
    p.add_argument("-o", "--output", required=True)
    _to_flag(p, "kohya")
    _rank_args(p, "LoRA")
    p.add_argument("--no-text-encoder", action="store_true", help="UNet only")
    p.add_argument("--min-diff", type=non_negative, default=0.0, help="skip weights whose largest change is below this")
    p.add_argument("--dtype", choices=DTYPES, default="fp32")
    p.add_argument("--per-module", action="store_true", help="print every module's rank and share")
    _common(p)
    p.set_defaults(func=cmd_extract)


def cmd_extract(args) -> int:
    from ..tools.extract import extract_lora

    quiet_progress()
    result = extract_lora(args.base, args.tuned, args.output, _rule(args), text_encoders=not args.no_text_encoder,
                          min_diff=args.min_diff, family=args.family, dtype=_dtype(args.dtype),
                          allow_pickle=args.allow_pickle, overwrite=args.overwrite, config_dir=args.config_dir,
                          to=args.to)
    print("\n".join(result.lines(args.per_module)))
    return 0


# ------------------------------------------------------------------------------------------------------- convert
def add_convert(sub) -> None:
    p = sub.add_parser("convert", help=".bin/.pkl/.pt/.ckpt → safetensors, kohya ↔ diffusers LoRA, cloneofsimo → "
                       "kohya, single file ↔ diffusers folder, embeddings .pt ↔ safetensors",
        description=(
            "Convert between formats: pickled .bin/.pkl/.pt/.ckpt files to safetensors (with "
            "--allow-pickle), kohya and diffusers LoRA layouts, cloneofsimo/lora files (a safelora "
            ".safetensors, or lora_weight.pt with --allow-pickle) to kohya, a single-file checkpoint and a "
            "diffusers folder (or a .ckpt with --write-ckpt), textual-inversion embeddings .pt and .safetensors."
        ))
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--to", choices=["kohya", "diffusers", "comfyui"],
                   help="LoRA target layout (default: the other one; comfyui = FLUX files in ComfyUI's native names)")
    p.add_argument("--naming", choices=["auto", "diffusers", "ldm"], default="auto",
                   help="kohya UNet names: auto = diffusers names for SD 1.x/2.x, SGM for SDXL")
    p.add_argument("--base", help="model a LoRA is for (resolves names; default: the embedded tiny model the file "
                                  "was trained on, else the family's full-size model)")
    p.add_argument("--dtype", choices=DTYPES, help="checkpoint conversions: precision of the written weights")
    _ckpt_flag(p)
    _common(p)
    p.set_defaults(func=cmd_convert)


def cmd_convert(args) -> int:
    from ..tools.convert import convert

    quiet_progress()
    result = convert(args.src, args.dst, to=args.to, family=args.family, base=args.base,
                     allow_pickle=args.allow_pickle, overwrite=args.overwrite, naming=args.naming,
                     config_dir=args.config_dir, dtype=_dtype(args.dtype), write_ckpt=args.write_ckpt)
    print("\n".join(result.lines()))
    return 0


# ------------------------------------------------------------------------------------------------------- inspect
def add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="what is in a LoRA, checkpoint or embedding file",
        description=(
            "Show what a file holds without loading a model: for a LoRA its family, adapters, ranks, "
            "alphas, metadata and NaN/Inf tensors; for a checkpoint its family and components; for an "
            "embedding its vectors."
        ))
    p.add_argument("files", nargs="+")
    p.add_argument("--all-metadata", action="store_true", help="print every metadata key")
    _common(p, model=False, output=False)
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args) -> int:
    from ..tools.inspect import inspect_file

    for i, path in enumerate(args.files):
        if i:
            print()
        print(inspect_file(path, args.allow_pickle, args.all_metadata))
    return 0


# ------------------------------------------------------------------------------------------------------- doctor
def add_doctor(sub) -> None:
    p = sub.add_parser("doctor", help="library versions, GPUs, free disk, and known-bad combinations with the fix",
                       description="What this environment runs: versions of torch, diffusers, transformers, peft, "
                                   "accelerate, lycoris-lora and friends; CUDA / MPS devices; free disk; where it "
                                   "differs from the tested lock; known-bad combinations with the fix. Exit 1 if a "
                                   "problem is found.")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args) -> int:
    import json

    from ..tools.doctor import diagnose

    report = diagnose()
    print(json.dumps(report.to_dict(), indent=2) if args.json else "\n".join(report.lines()))
    return 0 if report.ok else 1


# -------------------------------------------------------------------------------------------------------- bench
def _list(kind):
    """An argparse type: a comma-separated list of `kind` values ("1,2,4"; "on,off" for booleans)."""
    def parse(text: str) -> list:
        try:
            return [kind(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
    return parse


def _on_off(text: str) -> bool:
    if text.lower() in ("on", "true", "1", "yes"):
        return True
    if text.lower() in ("off", "false", "0", "no"):
        return False
    raise ValueError(f"{text!r} is not on or off")


def _on_off_or(*words: str):
    """An argparse value: on/off, or one of `words` (kept as the string)."""
    def parse(text: str):
        return text if text in words else _on_off(text)
    return parse


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="time LoRA training steps of the real trainer over a grid (img/s, memory, MFU)",
                       description="Warm-up then timed training steps of the trainer's own loop (cached latents and "
                                   "text embeddings, synthetic images) for every combination of the grid's values; "
                                   "writes JSON and a Markdown table: images/s, step time (median, min, max), peak "
                                   "memory (CUDA allocated/reserved, or peak RSS on the CPU), FLOPs and MFU. Each "
                                   "axis takes a comma-separated list. See docs/benchmarks.md.")
    p.add_argument("--family", type=_list(str), default=["sd15"], help="families (default sd15)")
    p.add_argument("--resolution", type=_list(int), default=[64], help="square sizes in px (default 64)")
    p.add_argument("--batch", type=_list(int), default=[1], help="batch sizes (default 1)")
    p.add_argument("--rank", type=_list(int), default=[4], help="network ranks (default 4)")
    p.add_argument("--checkpointing", type=_list(_on_off_or("selective")), default=[False],
                   help="gradient checkpointing: off, on, selective (default off)")
    p.add_argument("--compile", type=_list(_on_off_or("default", "reduce-overhead", "max-autotune")), default=[False],
                   help="torch.compile of each UNet transformer block (training.torch_compile): off, on, or a mode "
                        "(default, reduce-overhead, max-autotune; on = default) (default off)")
    p.add_argument("--quantize", type=_list(str), default=["none"],
                   help="model.quantize_base: none, int8, fp8 (default none)")
    p.add_argument("--channels-last", type=_list(_on_off), default=[False],
                   help="training.channels_last: off, on (default off)")
    p.add_argument("--optimizer", type=_list(str), default=["adamw"], help="optimizer.type values (default adamw)")
    p.add_argument("--algo", type=_list(str), default=["lora"], help="network.algo values (default lora)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per point (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--size", choices=["tiny", "mid", "full"], default="tiny",
                   help="tiny: the embedded tiny model (default); full: the family's real architecture with random "
                        "weights; mid: that architecture at 0.4 of its UNet's width")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16", "auto"], default="no",
                   help="training.mixed_precision (default no)")
    p.add_argument("--baseline", action="store_true",
                   help="also time a plain PyTorch loop on the same UNet, adapter and optimizer")
    p.add_argument("--peak-tflops", type=non_negative,
                   help="the device's peak TFLOP/s for the MFU (default: a table of known GPUs; none on the CPU)")
    p.add_argument("-o", "--output", help="write the JSON report here (default: print it)")
    p.add_argument("--markdown", help="write the Markdown table here")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    import json
    from pathlib import Path

    from ..tools.bench import grid, markdown, run_grid

    quiet_progress()
    cases = grid(family=args.family, resolution=args.resolution, batch=args.batch, rank=args.rank,
                 checkpointing=args.checkpointing, compile=args.compile, optimizer=args.optimizer, algo=args.algo,
                 quantize=args.quantize, channels_last=args.channels_last)
    report = run_grid(cases, args.steps, args.warmup, size=args.size,
                      mixed_precision=args.mixed_precision, baseline=args.baseline, peak_tflops=args.peak_tflops)
    text = json.dumps(report, indent=1)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    table = markdown(report)
    if args.markdown:
        Path(args.markdown).write_text(table, encoding="utf-8")
    print(table if args.output else text)
    return 0


TOOLS = [add_sample, add_merge, add_resize, add_extract, add_convert, add_inspect, add_doctor, add_bench]
