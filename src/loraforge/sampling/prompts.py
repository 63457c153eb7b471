"""Prompt files in kohya's syntax (`--sample_prompts`): one prompt a line, `#` comments, options after ` --`:
`--n` negative prompt, `--w` width, `--h` height, `--d` seed, `--l` CFG scale, `--s` steps, `--ss` sampler."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

from ..config.training import MAX_SEED
from ..errors import PromptFileError
from .generate import SampleRequest
from .samplers import normalize_sampler

_OPTION = re.compile(r"\s--(n|w|h|d|l|s|ss)\s")




def parse_prompt_line(line: str, base: SampleRequest, where: str = "prompt") -> SampleRequest:
    parts = _OPTION.split(" " + line.strip() + " ")
    prompt = parts[0].strip()
    req = replace(base, prompt=prompt)
    for flag, value in zip(parts[1::2], parts[2::2]):
        value = value.strip()
        try:
            if flag == "n":
                req = replace(req, negative_prompt=value)
            elif flag == "w":
                req = replace(req, width=int(value))
            elif flag == "h":
                req = replace(req, height=int(value))
            elif flag == "d":
                req = replace(req, seed=int(value))
            elif flag == "l":
                req = replace(req, guidance_scale=float(value))
            elif flag == "s":
                req = replace(req, steps=int(value))
            elif flag == "ss":
                req = replace(req, sampler=normalize_sampler(value))
        except ValueError as e:
            if flag == "ss":
                raise PromptFileError(f"{where}: --{flag} {value!r}: {e}") from None
            kind, example = ("a number", "7.5") if flag == "l" else ("a whole number", "512" if flag in "wh" else "20")
            raise PromptFileError(f"{where}: --{flag} {value!r} is not {kind}; write e.g. --{flag} {example}") from None
    if req.guidance_scale is not None and not math.isfinite(req.guidance_scale):
        raise PromptFileError(f"{where}: --l {req.guidance_scale}: give a finite guidance scale, e.g. --l 7.5")
    if req.steps is not None and req.steps < 1:
        raise PromptFileError(f"{where}: --s {req.steps}: give 1 or more denoising steps, e.g. --s 20")
    if not 0 <= req.seed <= MAX_SEED:
        raise PromptFileError(f"{where}: --d {req.seed}: a seed is 0 to {MAX_SEED}")
    for name in ("width", "height"):
        if getattr(req, name) % 8 or getattr(req, name) < 0:
            raise PromptFileError(f"{where}: {name} {getattr(req, name)} is not a multiple of 8; use a multiple of 8 "
                                  "(the VAE works on blocks of 8 pixels)")
    if not prompt:
        raise PromptFileError(f"{where}: no prompt before the options")
    return req


def read_prompt_file(path: str | Path, base: SampleRequest) -> list[SampleRequest]:
    path = Path(path)
    if path.is_dir():
        raise PromptFileError(f"{path}: a folder, not a prompt file; name the text file (one prompt a line) in "
                              "sampling.sample_prompts (or --prompt-file)")
    if not path.is_file():
        raise PromptFileError(f"{path}: no such prompt file; fix sampling.sample_prompts (or the --prompt-file path)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise PromptFileError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        out.append(parse_prompt_line(line, base, f"{path}:{n}"))
    if not out:
        raise PromptFileError(f"{path}: holds no prompt")
    return out
