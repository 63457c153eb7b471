"""Datasets by name through the `datasets` library: a hub id or a local ImageFolder, as diffusers' scripts take
them (`--dataset_name`, `--image_column`, `--caption_column`)."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .sources import ImageItem, pick_caption_column


def load_rows(d):
    """The split of `d.dataset_name`, its image column left undecoded (file paths or encoded bytes)."""
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise DataError("dataset.dataset_name needs the `datasets` package: pip install datasets") from e
    name = d.dataset_name
    local = Path(name).expanduser()
    try:
        ds = datasets.load_dataset(str(local) if local.is_dir() else name, d.dataset_config_name, split=d.dataset_split)
    except Exception as e:  # the library raises many kinds (missing, offline, bad split)
        raise DataError(f"dataset.dataset_name = {name!r} cannot be loaded: {type(e).__name__}: {e}; check the id "
                        "(and dataset.dataset_config_name, dataset.dataset_split), or pass a local ImageFolder folder "
                        "(offline: a folder of images, or dataset.instance_dir)") from None
    if d.image_column not in ds.column_names:
        raise DataError(
            f"dataset.image_column = {d.image_column!r} is not a column of {name!r} (columns: "
            f"{', '.join(ds.column_names)})"
        )
    if isinstance(ds.features[d.image_column], datasets.Image):
        ds = ds.cast_column(d.image_column, datasets.Image(decode=False))
    return ds


def dataset_items(d, subset, index: int) -> list[ImageItem]:
    ds = load_rows(d)
    columns = {c: None for c in ds.column_names}
    column = pick_caption_column(columns, d.caption_column)
    if d.caption_column != "auto" and column not in columns:
        raise DataError(
            f"dataset.caption_column = {d.caption_column!r} is not a column of {d.dataset_name!r} (columns: "
            f"{', '.join(ds.column_names)})"
        )
    items, uncaptioned = [], []
    for n, row in enumerate(ds):
        image = row[d.image_column]
        path, data = _image_source(image, d.dataset_name, n)
        caption = str(row[column]).strip() if column and row.get(column) is not None else ""
        if caption:
            items.append(ImageItem(path, caption, "dataset", index, data))
        elif subset.class_tokens:
            items.append(ImageItem(path, subset.class_tokens, "instance_prompt", index, data))
        else:
            uncaptioned.append(str(path))
    if uncaptioned:
        raise DataError(
            f"{len(uncaptioned)} row(s) of {d.dataset_name!r} have no caption (column {column or 'none found'!r}); "
            "set dataset.caption_column, or dataset.instance_prompt to caption them",
            uncaptioned[:20],
        )
    if not items:
        raise DataError(f"dataset.dataset_name = {d.dataset_name!r}: the split {d.dataset_split!r} has no rows")
    return items


def _image_source(image, name: str, n: int) -> tuple[Path, bytes | None]:
    """A local file when the row has one, else the encoded bytes (with a name for messages)."""
    if isinstance(image, dict):
        path = image.get("path")
        if path and Path(path).is_file():
            return Path(path), None
        if image.get("bytes"):
            return Path(f"hub:{name}/{path or n}"), image["bytes"]
    if isinstance(image, str) and Path(image).is_file():
        return Path(image), None
    if hasattr(image, "save"):  # a decoded PIL image (a column that is not of the Image feature type)
        import io

        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return Path(f"hub:{name}/{n}"), buf.getvalue()
    raise DataError(f"{name!r} row {n}: the image column holds neither a file nor image bytes ({type(image).__name__})")
