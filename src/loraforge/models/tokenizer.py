"""The real CLIP BPE tokenizer (49,408 tokens), shipped as package data so nothing is downloaded.

The files were generated from open_clip's `bpe_simple_vocab_16e6.txt.gz` (MIT, OpenAI CLIP); they are the vocabulary
of every SD 1.x / 2.x / SDXL tokenizer. SD 1.x and SDXL's first tokenizer pad with `<|endoftext|>`; SDXL's second
(and SD 2.x's) pad with `!` (id 0), as in the official repositories.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

ASSETS = "models/assets/clip_tokenizer"


def tokenizer_files() -> Path:
    return Path(str(resources.files("loraforge").joinpath(ASSETS)))


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tokenizer_files()), pad_token=pad_token)
    tok.model_max_length = 77
    return tok
