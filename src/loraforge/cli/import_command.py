"""`loraforge import`: a kohya, diffusers or cloneofsimo training command as a loraforge config (the work is done by
`loraforge.config.importer`; this reads the input and writes the output)."""

from __future__ import annotations

import sys
from pathlib import Path


def add_import(sub) -> None:
    p = sub.add_parser(
        "import",
        help="turn a kohya, diffusers or cloneofsimo (lora_pti) training command (or kohya's --config_file TOML) into "
             "a loraforge config",
        description=(
            "Read a kohya train_network.py / sdxl_train_network.py command line or its --config_file TOML, or a "
            "diffusers train_dreambooth_lora*.py / train_text_to_image_lora*.py command line, or a cloneofsimo/lora "
            "lora_pti / train_lora_dreambooth.py command line, pasted as it is "
            "(accelerate launch, line continuations, quotes), and write the equivalent loraforge TOML config. The "
            "report lists every flag mapped, every flag not mapped and why, and where the meaning differs. "
            "Every flag and its key: docs/import.md."
        ),
    )
    p.add_argument("source", help="file holding the command line or the kohya TOML; - reads stdin")
    p.add_argument("-o", "--output", metavar="OUT.toml", help="write the config here (default: print it; the "
                                                               "report then goes to stderr)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT.toml")
    p.set_defaults(func=cmd_import)


def cmd_import(args) -> int:
    from ..config.importer import import_text
    from ..errors import InputNotFoundError, OutputExistsError
    from ..utils.files import write_text_atomic

    if args.source == "-":
        text, source, base = sys.stdin.read(), "<stdin>", Path.cwd()
    else:
        path = Path(args.source)
        if not path.is_file():
            raise InputNotFoundError(f"{path}: no such file (pass the file holding the command, or - for stdin)")
        text, source, base = path.read_text(encoding="utf-8", errors="replace"), str(path), path.parent
    if args.output and Path(args.output).exists() and not args.overwrite:
        raise OutputExistsError(f"{args.output} exists; pass --overwrite to replace it, or choose another -o")
    result = import_text(text, source, base)
    report = "\n".join(result.report_lines())
    if args.output:
        write_text_atomic(args.output, result.toml())
        print(report)
        print(f"\nwrote {args.output}; check it with: loraforge train {args.output} --dry-run")
    else:
        print(result.toml(), end="")
        print(report, file=sys.stderr)
    return 0
