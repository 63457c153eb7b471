"""The real CLIP BPE tokenizer (49,408 tokens), shipped as package data so nothing is downloaded.

The files were generated from open_clip's `bpe_simple_vocab_16e6.txt.gz` (MIT, OpenAI CLIP); they are the vocabulary
of every SD 1.x / 2.x / SDXL tokenizer. SD 1.x and SDXL's first tokenizer pad with `<|endoftext|>`; SDXL's second
(and SD 2.x's) pad with `!` (id 0), as in the official repositories.

FLUX's T5 tokenizer for the embedded tiny FLUX is built in code instead (`t5_tokenizer`).
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


# A small T5 vocabulary: T5's special tokens at T5's ids (<pad> 0, </s> 1, <unk> 2), whole words for common caption
# words, and every ASCII letter, digit and punctuation mark with and without the word-start marker "▁", so any
# English caption tokenizes without <unk>.
T5_WORDS = (
    "a an the of on in at with and to is photo picture painting drawing render style portrait close up of"
    " robot toy dog cat man woman person red green blue yellow black white small big beach street tok sks"
).split()


def t5_tokenizer(model_max_length: int = 512):
    """A T5 tokenizer (T5TokenizerFast over a SentencePiece-style unigram model, as google/t5-v1_1's) built in code
    with the `tokenizers` library: the real tokenizer's behaviour (metaspace word starts, `</s>` appended, `<pad>`
    id 0) on a small vocabulary, for the embedded tiny FLUX. Nothing is downloaded."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -5.0) for w in dict.fromkeys(T5_WORDS)]
    for c in string.ascii_letters + string.digits + string.punctuation:
        pieces += [("▁" + c, -9.0), (c, -10.0)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0, model_max_length=model_max_length)
