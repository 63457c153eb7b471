"""Where images and captions come from: image folders, with captions from an ImageFolder `metadata.jsonl`, from
sidecar text files, or from a fallback (the instance prompt, a subset's class tokens, the class prompt)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")  # animated files: their first frame
CAPTION_EXTENSIONS = (".txt", ".caption")  # the sidecar extensions in use (ours and kohya's default)
# Image files loraforge does not read: reported in the dataset summary as skipped, never dropped silently.
OTHER_IMAGE_EXTENSIONS = (".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl", ".svg", ".psd", ".ico", ".jp2")
CAPTION_COLUMNS = ("text", "caption", "prompt")
DEMO_INSTANCE_PROMPT = "a photo of sks robot"


@dataclass(frozen=True)
class ImageItem:
    path: Path  # for `datasets` rows without a file: a name like `hub:<dataset>/<row>` (for messages)
    caption: str
    caption_source: str  # "metadata", "sidecar", "instance_prompt", "class_tokens", "class_prompt" or "dataset"
    subset: int = 0  # index into the run's subsets
    data: bytes | None = None  # the encoded image, for `datasets` rows that have no local file

    @property
    def is_file(self) -> bool:
        return self.data is None


def demo_dir() -> Path:
    """The sample images loraforge ships (8 pictures of one toy robot, each with a caption)."""
    return Path(str(resources.files("loraforge").joinpath("assets/demo")))


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def pick_caption_column(row: dict, column: str) -> str:
    """The caption column of one row: `column`, or with `auto` the first of text/caption/prompt present."""
    if column != "auto":
        return column
    return next((c for c in CAPTION_COLUMNS if c in row), "")


def read_text_file(path: Path) -> str:
    """A UTF-8 text file (a leading byte-order mark is dropped); `DataError` naming the file if it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start} is {e.object[e.start]:#04x}); re-save it as UTF-8 "
                        "(most editors offer 'UTF-8' under 'Save as' / 'Encoding')") from None


def _read_metadata(path: Path, column: str, names: set[str]) -> dict[str, str]:
    """file_name -> caption of an ImageFolder `metadata.jsonl`. Every row must name an image of the folder (`names`)
    and have the caption column; `DataError` lists every bad row with its number."""
    captions: dict[str, str] = {}
    problems = []
    for n, line in enumerate(read_text_file(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{n}: not a JSON object ({e.msg})")
            continue
        if not isinstance(row, dict) or "file_name" not in row:
            problems.append(f"{path}:{n}: no 'file_name' field")
            continue
        name = str(row["file_name"])
        if name not in names:
            problems.append(f"{path}:{n}: file_name {name!r} is not an image of {path.parent} (a missing file, a "
                            f"typo, or a type loraforge does not read: {', '.join(IMAGE_EXTENSIONS)})")
            continue
        col = pick_caption_column(row, column)
        if col and col in row:
            if row[col] is not None:
                captions[name] = str(row[col]).strip()
        else:
            valid = ", ".join(CAPTION_COLUMNS) if column == "auto" else repr(column)
            problems.append(f"{path}:{n}: no caption column {valid} (its fields: {', '.join(row)}); rename the "
                            "field or set dataset.caption_column")
    if problems:
        raise DataError(f"{path} has {len(problems)} bad row(s); fix them (or remove the rows)", problems)
    return captions


def read_caption_file(path: Path, all_lines: bool) -> str:
    """A sidecar caption: its first non-empty line, or every line (for wildcards, which pick one per step)."""
    lines = [line.strip() for line in read_text_file(path).splitlines() if line.strip()]
    if not lines:
        return ""
    return "\n".join(lines) if all_lines else lines[0]


def skipped_files(folder: Path) -> list[str]:
    """The files of an image folder that are not used and look as if they were meant to be: links to nothing, and
    images of a type loraforge does not read. One line each, with the reason (for the dataset summary)."""
    out = []
    for p in sorted(folder.iterdir()):
        if p.is_symlink() and not p.exists():
            out.append(f"{p}: skipped, a link to {os.readlink(p)}, which does not exist")
        elif p.is_file() and p.suffix.lower() in OTHER_IMAGE_EXTENSIONS:
            out.append(f"{p}: skipped, {p.suffix} is not a type loraforge reads ({', '.join(IMAGE_EXTENSIONS)}); "
                       "convert it to PNG or JPEG")
    return out


def unread_captions(folder: Path, caption_extension: str) -> list[str]:
    """Caption files of an image folder that look meant but are not read: a sidecar name that is a folder, and
    sidecars with the other usual extension when no image has one with `caption_extension` (kohya's default is
    `.caption`, ours `.txt`). One line each, for the dataset summary."""
    images = list_images(folder)
    out = [f"{img.with_suffix(caption_extension)}: a folder, not a caption file; {img.name} gets the fallback caption"
           for img in images if img.with_suffix(caption_extension).is_dir()]
    if any(img.with_suffix(caption_extension).is_file() for img in images):
        return out
    for ext in CAPTION_EXTENSIONS:
        found = [img.with_suffix(ext) for img in images if ext != caption_extension and img.with_suffix(ext).is_file()]
        if found:
            more = f" and {len(found) - 1} more" if len(found) > 1 else ""
            out.append(f"{found[0]}{more}: {ext} caption files are not read (dataset.caption_extension = "
                       f"{caption_extension!r}); set dataset.caption_extension = {ext!r} to use them")
    return out


def collect_folder(
    folder: Path,
    *,
    caption_extension: str,
    metadata_file: str,
    caption_column: str,
    fallback: str | None,
    fallback_source: str,
    subset: int = 0,
    all_lines: bool = False,
    what: str = "dataset.instance_dir",
) -> tuple[list[ImageItem], list[Path]]:
    """The images of one folder with their captions, and the images that have none."""
    if not folder.is_dir():
        raise DataError(f"{what} = {str(folder)!r}: no such folder")
    images = list_images(folder)
    if not images:
        raise DataError(f"{what} = {str(folder)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    meta_path = folder / metadata_file
    names = {p.name for p in images}
    metadata = _read_metadata(meta_path, caption_column, names) if meta_path.is_file() else {}
    items, uncaptioned = [], []
    for img in images:
        if metadata.get(img.name):
            items.append(ImageItem(img, metadata[img.name], "metadata", subset))
            continue
        sidecar = img.with_suffix(caption_extension)
        text = read_caption_file(sidecar, all_lines) if sidecar.is_file() else ""
        if text:
            items.append(ImageItem(img, text, "sidecar", subset))
        elif fallback:
            items.append(ImageItem(img, fallback, fallback_source, subset))
        else:
            uncaptioned.append(img)
    return items, uncaptioned


def uncaptioned_error(uncaptioned: list[Path], caption_extension: str, metadata_file: str, fix: str) -> DataError:
    return DataError(
        f"{len(uncaptioned)} image(s) have no caption ({caption_extension} sidecar or {metadata_file} entry); "
        f"{fix}, or add captions",
        [str(p) for p in uncaptioned[:20]],
    )

