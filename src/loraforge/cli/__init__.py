"""`loraforge` command line. Only argparse is imported here, so `loraforge --help` answers at once; each
subcommand imports torch/diffusers when it runs."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from . import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loraforge",
        description="Fine-tune Stable Diffusion (SD 1.5, SD 2.x, SDXL) with LoRA; files for diffusers, A1111, ComfyUI.",
    )
    debug_help = "show the full traceback of a user error too (for bug reports)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    parser.add_argument("--version", action="version", version=f"loraforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in commands.REGISTRY:
        register(sub)
    for subparser in sub.choices.values():  # `loraforge train --debug ...` works as well as `loraforge --debug train`
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return commands.run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
