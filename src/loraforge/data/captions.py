"""Caption processing, in kohya's order (sd-scripts `BaseDataset.process_caption`):

1. line choice: the first line, or a random one with wildcards on (done first, so that a prefix or suffix is never
   lost with the other lines, as it is in sd-scripts);
2. prefix / suffix;
3. whole-caption dropout (rate, or every n-th epoch);
4. wildcards `{a|b|c}` (`{{` / `}}` are literal braces);
5. fixed / flexible split (`keep_tokens_separator` — a second one starts a fixed suffix — or the first
   `keep_tokens` tags), shuffle of the flexible tags, tag dropout on them, rejoined with `caption_separator`;
6. `secondary_separator` → `caption_separator`;
7. text replacements (pivotal tuning's `TOK` → `<s0><s1>`), last.

Randomness comes from the generator passed in (the dataset derives one from (seed, epoch, index)), so a caption is a
pure function of those and a resumed run sees the captions an uninterrupted one would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

_WILDCARD = re.compile(r"\{([^{}]+)\}")


@dataclass(frozen=True)
class CaptionOptions:
    prefix: str = ""
    suffix: str = ""
    dropout_rate: float = 0.0
    dropout_every_n_epochs: int = 0
    tag_dropout_rate: float = 0.0
    enable_wildcard: bool = False
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    shuffle: bool = False
    separator: str = ","
    secondary_separator: str = ""

    @classmethod
    def from_config(cls, c) -> "CaptionOptions":
        """From any object with the `[dataset]` caption field names (a `DatasetConfig` or a resolved dict view)."""
        return cls(
            prefix=c.caption_prefix or "",
            suffix=c.caption_suffix or "",
            dropout_rate=c.caption_dropout_rate,
            dropout_every_n_epochs=c.caption_dropout_every_n_epochs,
            tag_dropout_rate=c.caption_tag_dropout_rate,
            enable_wildcard=c.enable_wildcard,
            keep_tokens=c.keep_tokens,
            keep_tokens_separator=c.keep_tokens_separator or "",
            shuffle=c.shuffle_caption,
            separator=c.caption_separator,
            secondary_separator=c.secondary_separator or "",
        )

    def varying(self) -> list[str]:
        """The `[dataset]` options set here that make a caption change from step to step."""
        out = []
        if self.shuffle:
            out.append("shuffle_caption")
        if self.dropout_rate > 0:
            out.append("caption_dropout_rate")
        if self.dropout_every_n_epochs > 0:
            out.append("caption_dropout_every_n_epochs")
        if self.tag_dropout_rate > 0:
            out.append("caption_tag_dropout_rate")
        if self.enable_wildcard:
            out.append("enable_wildcard")
        return out


def _split(text: str, sep: str) -> list[str]:
    return [t.strip() for t in text.split(sep) if t.strip()]


def _joiner(sep: str) -> str:
    return sep if sep.endswith(" ") or sep.isspace() else sep + " "


def _wildcards(caption: str, rng: np.random.Generator) -> str:
    open_mark, close_mark = "\x00(", "\x00)"
    caption = caption.replace("{{", open_mark).replace("}}", close_mark)

    def pick(m: re.Match) -> str:
        options = m.group(1).split("|")
        return options[int(rng.integers(len(options)))]

    caption = _WILDCARD.sub(pick, caption)
    return caption.replace(open_mark, "{").replace(close_mark, "}")


def process_caption(
    caption: str,
    opts: CaptionOptions,
    rng: np.random.Generator,
    epoch: int = 0,
    replacements: dict[str, str] | None = None,
) -> str:
    """One training caption from the stored text. `epoch` counts from 0 (kohya counts from 1: "every n-th epoch"
    drops the captions of epochs n, 2n, ... counted from 1)."""
    lines = [line for line in caption.splitlines() if line.strip()] or [""]
    if opts.enable_wildcard and len(lines) > 1:
        caption = lines[int(rng.integers(len(lines)))]
    else:
        caption = lines[0]
    caption = caption.strip()
    if opts.prefix:
        caption = f"{opts.prefix} {caption}"
    if opts.suffix:
        caption = f"{caption} {opts.suffix}"

    dropped = opts.dropout_rate > 0 and rng.random() < opts.dropout_rate
    if opts.dropout_every_n_epochs > 0 and (epoch + 1) % opts.dropout_every_n_epochs == 0:
        dropped = True
    if dropped:
        caption = ""
    else:
        if opts.enable_wildcard:
            caption = _wildcards(caption, rng)
        caption = _tags(caption, opts, rng)
        if opts.secondary_separator:
            caption = caption.replace(opts.secondary_separator, opts.separator)
    for old, new in (replacements or {}).items():
        caption = caption.replace(old, new)
    return caption


def _tags(caption: str, opts: CaptionOptions, rng: np.random.Generator) -> str:
    """Step 5: fixed prefix | flexible tags (shuffled, dropped) | fixed suffix."""
    sep, marker = opts.separator, opts.keep_tokens_separator
    has_marker = bool(marker) and marker in caption
    if not (opts.shuffle or opts.tag_dropout_rate > 0 or has_marker):
        return caption
    suffix: list[str] = []
    if has_marker:
        fixed_part, flex_part = caption.split(marker, 1)
        if marker in flex_part:
            flex_part, suffix_part = flex_part.split(marker, 1)
            suffix = _split(suffix_part.replace(marker, sep), sep)
        fixed, flex = _split(fixed_part, sep), _split(flex_part, sep)
    else:
        tags = _split(caption, sep)
        fixed, flex = tags[: opts.keep_tokens], tags[opts.keep_tokens :]
    if opts.shuffle:
        flex = [flex[i] for i in rng.permutation(len(flex))]
    if opts.tag_dropout_rate > 0:
        flex = [t for t in flex if rng.random() >= opts.tag_dropout_rate]
    return _joiner(sep).join(fixed + flex + suffix)


def tag_frequency(captions: list[str], sep: str = ",") -> dict[str, int]:
    """How often each tag occurs (lower-cased), for the `ss_tag_frequency` metadata."""
    freq: dict[str, int] = {}
    for caption in captions:
        for tag in _split(caption.splitlines()[0] if caption else "", sep):
            freq[tag.lower()] = freq.get(tag.lower(), 0) + 1
    return freq
