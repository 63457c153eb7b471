"""`loraforge dataset caption`: caption a folder of training images with an image-to-text model the user points to
(a local folder: BLIP, BLIP-2, GIT, Florence-2... anything transformers loads with `AutoModelForImageTextToText` and
`AutoProcessor`), writing `.txt` sidecars or `metadata.jsonl` rows, the trigger word first. An image that already
has a caption (as training reads it: its `metadata.jsonl` row, else its sidecar) keeps it unless `overwrite`."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..data.sources import list_images, read_caption_file, read_text_file
from ..errors import ToolError
from ..utils.files import write_text_atomic

log = logging.getLogger("loraforge.tools")

FORMATS = ("txt", "jsonl")
METADATA_FILE = "metadata.jsonl"
DEFAULT_PROMPTS = {"florence2": "<CAPTION>"}  # models that caption only when given a task prompt


@dataclass
class CaptionResult:
    written: dict[Path, str] = field(default_factory=dict)  # image -> its new caption
    kept: list[Path] = field(default_factory=list)  # images whose caption was left alone
    target: Path | None = None  # metadata.jsonl when written
    notes: list[str] = field(default_factory=list)


def with_trigger(caption: str, trigger: str | None) -> str:
    caption = " ".join(caption.split())
    if not trigger:
        return caption
    return f"{trigger}, {caption}" if caption else trigger


def _metadata_rows(folder: Path) -> list[dict]:
    path = folder / METADATA_FILE
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(read_text_file(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ToolError(f"{path}:{n}: not a JSON object ({e.msg}); fix the line before captioning into it") from None
        rows.append(row)
    return rows


def _row_caption(row: dict) -> str:
    return next((str(row[c]).strip() for c in ("text", "caption", "prompt") if row.get(c)), "")


def existing_captions(folder: Path, images: list[Path], caption_extension: str = ".txt") -> dict[Path, str]:
    """image -> its caption as training reads it (`metadata.jsonl` first, then the sidecar); images without one
    are left out."""
    meta = {str(r.get("file_name")): _row_caption(r) for r in _metadata_rows(folder)}
    out = {}
    for img in images:
        sidecar = img.with_suffix(caption_extension)
        text = meta.get(img.name) or (read_caption_file(sidecar, False) if sidecar.is_file() else "")
        if text:
            out[img] = text
    return out


def load_captioner(model_path: str | Path, device=None):
    """(processor, model, model_type) of a local captioning model folder; `ToolError` naming what to pass when the
    folder is not one transformers loads as an image-to-text model."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor  # lazy: transformers is heavy

    folder = Path(model_path).expanduser()
    config = folder / "config.json"
    if not config.is_file():
        onnx = list(folder.glob("*.onnx")) if folder.is_dir() else []
        why = (f"{folder} holds an ONNX model ({onnx[0].name}): WD14-style ONNX taggers are not supported yet"
               if onnx else f"{folder} is not a model folder (no config.json)")
        raise ToolError(f"--model {model_path}: {why}. Give a local folder of a transformers image-to-text model "
                        "(BLIP, e.g. Salesforce/blip-image-captioning-large downloaded with `hf download`; "
                        "Florence-2; GIT)")
    model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type", "")
    try:
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ToolError(f"--model {model_path}: transformers cannot load it as an image-to-text model with its "
                        f"processor ({type(e).__name__}: {e}). Give a BLIP, Florence-2 or GIT folder") from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return processor, model.to(device).eval(), model_type


def generate_captions(processor, model, images, *, prompt: str | None = None, max_new_tokens: int = 40) -> list[str]:
    """One caption per PIL image (a batch)."""
    import torch

    kwargs = {"images": images, "return_tensors": "pt"}
    if prompt:
        kwargs["text"] = [prompt] * len(images)
    inputs = processor(**kwargs).to(model.device)
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens)
    return [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]


def caption_folder(folder: str | Path, model_path: str | Path, *, trigger: str | None = None,
                   overwrite: bool = False, fmt: str = "txt", prompt: str | None = None, max_new_tokens: int = 40,
                   batch_size: int = 4, caption_extension: str = ".txt") -> CaptionResult:
    """Caption the images of `folder` that have no caption (all of them with `overwrite`), writing `fmt`: "txt"
    sidecars (`caption_extension`) or rows of the folder's `metadata.jsonl` (other rows and fields kept)."""
    from PIL import Image

    folder = Path(folder).expanduser()
    if fmt not in FORMATS:
        raise ToolError(f"--format {fmt}: give one of {', '.join(FORMATS)}")
    if not folder.is_dir():
        raise ToolError(f"{folder}: no such folder; give the folder of the training images")
    images = list_images(folder)
    if not images:
        raise ToolError(f"{folder} holds no images to caption")
    result = CaptionResult()
    have = existing_captions(folder, images, caption_extension)
    todo = images if overwrite else [img for img in images if img not in have]
    result.kept = [img for img in images if img not in todo]
    if not todo:
        return result
    processor, model, model_type = load_captioner(model_path)
    prompt = prompt if prompt is not None else DEFAULT_PROMPTS.get(model_type)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        pil = []
        for path in batch:
            with Image.open(path) as im:
                pil.append(im.convert("RGB"))
        for path, text in zip(batch, generate_captions(processor, model, pil, prompt=prompt,
                                                       max_new_tokens=max_new_tokens)):
            result.written[path] = with_trigger(text, trigger)
        log.info("captioned %d of %d image(s)", min(start + batch_size, len(todo)), len(todo))
    if fmt == "txt":
        for path, caption in result.written.items():
            write_text_atomic(path.with_suffix(caption_extension), caption + "\n")
        meta = {str(r.get("file_name")) for r in _metadata_rows(folder) if _row_caption(r)}
        shadowed = [p.name for p in result.written if p.name in meta]
        if shadowed:
            result.notes.append(f"{folder / METADATA_FILE} captions {', '.join(shadowed[:5])} too, and training "
                                "reads it before the sidecars: use --format jsonl to update it")
    else:
        result.target = folder / METADATA_FILE
        rows = _metadata_rows(folder)
        by_name = {str(r.get("file_name")): r for r in rows}
        for path, caption in result.written.items():
            row = by_name.get(path.name)
            if row is None:
                rows.append({"file_name": path.name, "text": caption})
            else:
                column = next((c for c in ("text", "caption", "prompt") if c in row), "text")
                row[column] = caption
        write_text_atomic(result.target, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return result
