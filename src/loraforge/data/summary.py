"""`loraforge dataset check`: a summary of one training folder as training would read it, without a model.

Each image is opened and decoded (`check_image`, as the pre-training check does), sized (`probe_size`), given the
aspect bucket training would put it in (`group_from`), and its caption is looked up as training looks it up
(`collect_folder`: `metadata.jsonl`, then the sidecar). Problems that would stop training (unreadable or too small
images, images without a caption and no `instance_prompt`) are `problems`; what trains but is probably not meant
(duplicates, empty caption files, skipped file types, unread caption files) are `notes`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..config.dataset import DatasetConfig, pixel_size, size_text
from .buckets import BucketManager
from .check import duplicate_notes, min_image_size
from .images import check_image, probe_size
from .sources import collect_folder, skipped_files, unread_captions
from .subsets import group_from


@dataclass
class ImageInfo:
    path: Path
    size: tuple[int, int] | None  # (width, height) as displayed; None when unreadable
    bucket: tuple[int, int] | None
    caption: str  # "" when none
    caption_source: str  # "metadata", "sidecar", "empty" (a caption file with no text), "missing", "fallback"
    problem: str | None = None  # unreadable or too small


@dataclass
class FolderSummary:
    folder: Path
    resolution: tuple[int, int]
    min_size: int
    images: list[ImageInfo]
    problems: list[str] = field(default_factory=list)  # would stop training
    notes: list[str] = field(default_factory=list)  # trains, but probably not what was meant

    def lines(self) -> list[str]:
        n = len(self.images)
        sources = Counter(i.caption_source for i in self.images)
        sizes = [i.size for i in self.images if i.size]
        out = [f"{self.folder}: {n} image(s), training at {size_text(self.resolution)} (images under "
               f"{self.min_size} px on the shorter side are refused)"]
        if sizes:
            ws, hs = [w for w, _ in sizes], [h for _, h in sizes]
            out.append(f"sizes: {min(ws)}–{max(ws)} × {min(hs)}–{max(hs)} px; most common: "
                       + ", ".join(f"{w}×{h} ({c})" for (w, h), c in Counter(sizes).most_common(3)))
        buckets = Counter(i.bucket for i in self.images if i.bucket)
        if buckets:
            out.append("buckets: " + ", ".join(f"{w}×{h}: {c}" for (w, h), c in sorted(buckets.items())))
        out.append("captions: " + ", ".join(f"{k} {sources[k]}" for k in ("metadata", "sidecar", "fallback", "empty",
                                                                           "missing") if sources[k]))
        return out


def summarize_folder(folder: Path, d: DatasetConfig, resolution) -> FolderSummary:
    """The summary of `folder` read with the `[dataset]` options `d` (caption extension, metadata file, buckets,
    `min_image_size`, `instance_prompt`) at `resolution`. `DataError` when the folder holds no image or its
    `metadata.jsonl` has bad rows (training stops on those too)."""
    folder = Path(folder)
    res = pixel_size(resolution)
    items, uncaptioned = collect_folder(folder, caption_extension=d.caption_extension, metadata_file=d.metadata_file,
                                        caption_column=d.caption_column, fallback=None, fallback_source="fallback",
                                        what="loraforge dataset check: DIR")
    buckets = BucketManager(group_from(d, res, 1).buckets)
    min_size = min_image_size(d, res)
    infos = []
    for item in items:
        infos.append(ImageInfo(item.path, None, None, item.caption, item.caption_source))
    for path in uncaptioned:
        empty = path.with_suffix(d.caption_extension).is_file()
        source = "fallback" if d.instance_prompt else ("empty" if empty else "missing")
        infos.append(ImageInfo(path, None, None, d.instance_prompt or "", source))
    infos.sort(key=lambda i: i.path)
    for info in infos:
        bad = check_image(info.path, min_size)
        if bad is None or "too small" in bad.reason:
            info.size = probe_size(info.path)
            info.bucket = buckets.select(*info.size)
        info.problem = bad.reason if bad else None
    summary = FolderSummary(folder, res, min_size, infos)
    bad = [i for i in infos if i.problem]
    if bad:
        target = summary.notes if d.skip_bad_images else summary.problems
        target += [f"{i.path}: {i.problem}" for i in bad]
    missing = f"no {d.caption_extension} sidecar or {d.metadata_file} entry"
    for i in infos:
        if i.caption_source in ("empty", "missing"):
            why = "the caption file is empty" if i.caption_source == "empty" else missing
            summary.problems.append(f"{i.path}: no caption ({why}); write one, or give every uncaptioned image "
                                    "one caption with dataset.instance_prompt")
    empty_files = [i for i in infos if i.caption_source == "fallback" and i.path.with_suffix(d.caption_extension).is_file()]
    summary.notes += [f"{i.path.with_suffix(d.caption_extension)}: empty; the image trains with instance_prompt"
                      for i in empty_files]
    summary.notes += duplicate_notes([it for it in items if it.path not in {i.path for i in bad}])
    summary.notes += skipped_files(folder) + unread_captions(folder, d.caption_extension)
    return summary
