"""Where images and captions come from: an instance folder, with captions from an ImageFolder `metadata.jsonl`,
from sidecar text files, or from the instance prompt."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..config.dataset import DatasetConfig
from .errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_COLUMNS = ("text", "caption", "prompt")
DEMO_INSTANCE_PROMPT = "a photo of sks robot"


@dataclass(frozen=True)
class ImageItem:
    path: Path
    caption: str
    caption_source: str  # "metadata", "sidecar" or "instance_prompt"


def demo_dir() -> Path:
    """The sample images loraforge ships (8 pictures of one toy robot, each with a caption)."""
    return Path(str(resources.files("loraforge").joinpath("assets/demo")))


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _read_metadata(path: Path, column: str) -> dict[str, str]:
    captions: dict[str, str] = {}
    problems = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{n}: not a JSON object ({e.msg})")
            continue
        if "file_name" not in row:
            problems.append(f"{path}:{n}: no 'file_name' field")
            continue
        col = column
        if col == "auto":
            col = next((c for c in CAPTION_COLUMNS if c in row), "")
        if col and col in row and row[col] is not None:
            captions[str(row["file_name"])] = str(row[col]).strip()
        elif column != "auto":
            problems.append(f"{path}:{n}: no column {column!r} (fields: {', '.join(row)}); set dataset.caption_column")
    if problems:
        raise DataError(f"{path} has {len(problems)} bad line(s)", problems)
    return captions


def collect_items(cfg: DatasetConfig) -> list[ImageItem]:
    """Every image of the dataset with its caption. Raises `DataError` naming what is missing."""
    folder = Path(cfg.instance_dir).expanduser() if cfg.instance_dir else demo_dir()
    instance_prompt = cfg.instance_prompt
    if cfg.instance_dir is None and instance_prompt is None:
        instance_prompt = DEMO_INSTANCE_PROMPT
    if not folder.is_dir():
        raise DataError(f"dataset.instance_dir = {str(folder)!r}: no such folder")
    images = list_images(folder)
    if not images:
        raise DataError(
            f"dataset.instance_dir = {str(folder)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
        )
    meta_path = folder / cfg.metadata_file
    metadata = _read_metadata(meta_path, cfg.caption_column) if meta_path.is_file() else {}
    items, uncaptioned = [], []
    for img in images:
        if img.name in metadata and metadata[img.name]:
            items.append(ImageItem(img, metadata[img.name], "metadata"))
            continue
        sidecar = img.with_suffix(cfg.caption_extension)
        if sidecar.is_file():
            text = sidecar.read_text(encoding="utf-8").strip().splitlines()
            if text and text[0].strip():
                items.append(ImageItem(img, text[0].strip(), "sidecar"))
                continue
        if instance_prompt:
            items.append(ImageItem(img, instance_prompt, "instance_prompt"))
        else:
            uncaptioned.append(img)
    if uncaptioned:
        shown = [str(p) for p in uncaptioned[:20]]
        raise DataError(
            f"{len(uncaptioned)} image(s) have no caption ({cfg.caption_extension} sidecar or {cfg.metadata_file} "
            "entry); set dataset.instance_prompt to caption them, or add captions",
            shown,
        )
    return items
