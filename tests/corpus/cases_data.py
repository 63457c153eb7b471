"""Corpus cases of the dataset, through `train --dry-run` (which opens every image and prints the dataset summary):
images that cannot be read, captions and metadata that are not what they look like, files that would be skipped or
trained twice without a word, kohya folders and dataset TOMLs that do not say what they mean."""

from __future__ import annotations

import json
from pathlib import Path

from .runner import Case as C


def _dry(d: Path, x, folder: Path, *more: str) -> list[str]:
    return [*x.train(d), *x.data_args(folder, *more), "--dry-run"]


def _folder(d: Path, x, n: int = 2) -> Path:
    return x.images(d / "data", n)


def D(name, build, rc=2, file=None, field=None, fix=None, more=(), **kw) -> C:  # noqa: N802
    """A dataset case: `build(data_folder, x)` damages a folder of two good 64 px images."""
    def argv(d, x):
        folder = _folder(d, x)
        build(folder, x)
        return _dry(d, x, folder, *more)
    return C(f"data/{name}", "data", argv, rc=rc, file=file, field=field, fix=fix, **kw)


def _bomb(folder: Path, x) -> None:
    from PIL import Image

    Image.new("1", (14000, 14000)).save(folder / "bomb.png")  # 196 Mpx: Pillow's decompression-bomb limit


def _link(folder: Path, x) -> None:
    (folder / "gone.png").symlink_to(folder / "nowhere.png")


def _metadata(*rows, raw: bytes | None = None):
    def build(folder: Path, x) -> None:
        text = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"
        (folder / "metadata.jsonl").write_bytes(raw if raw is not None else text.encode())
    return build


def _kohya(d: Path, x, *folders: str, more: tuple = ()) -> list[str]:
    for name in folders:
        x.images(d / "img" / name)
    return [*x.train(d, f"dataset.train_data_dir={str(d / 'img')!r}", "dataset.resolution=64", *more), "--dry-run"]


def _cases_images() -> list[C]:
    fix = "dataset.skip_bad_images = true"
    return [
        D("zero-byte-image", lambda f, x: x.raw(f, "zero.png", b""), file="zero.png", fix=fix),
        D("truncated-png", lambda f, x: x.raw(f, "cut.png", (f / "img0.png").read_bytes()[:80]), file="cut.png",
          fix=fix),
        D("text-named-png", lambda f, x: x.text(f / "notes.png", "not an image"), file="notes.png", fix=fix),
        D("image-too-small", lambda f, x: x.image(f / "tiny.png", (8, 8)), file="tiny.png",
          field="dataset.min_image_size", fix=fix),
        D("decompression-bomb", _bomb, file="bomb.png", fix=fix),
        D("skip-bad-images", lambda f, x: x.raw(f, "zero.png", b""), rc=0, file="zero.png", fix="skipping",
          more=("dataset.skip_bad_images=true",)),
        C("data/all-bad-skipped", "data",
          lambda d, x: _dry(d, x, x.raw(d / "data", "zero.png", b"").parent, "dataset.skip_bad_images=true"),
          file="zero.png", fix="no usable image"),
        C("data/empty-folder", "data", lambda d, x: _dry(d, x, (d / "data").mkdir() or d / "data"), file="data",
          field="dataset.instance_dir", fix="holds no images"),
        C("data/only-captions", "data", lambda d, x: _dry(d, x, x.text(d / "data" / "a.txt", "a cat").parent),
          file="data", field="dataset.instance_dir", fix="holds no images"),
        C("data/folder-is-a-file", "data", lambda d, x: _dry(d, x, x.text(d / "data", "x")), file="data",
          field="dataset.instance_dir", fix="no such folder"),
        C("data/folder-missing", "data", lambda d, x: _dry(d, x, d / "nodata"), file="nodata",
          field="dataset.instance_dir", fix="no such folder"),
        C("data/images-only-in-subfolders", "data", lambda d, x: _dry(d, x, x.images(d / "data" / "sub").parent),
          file="data", field="dataset.instance_dir", fix="sub"),
        # what already holds: odd but readable images train (one line of the plan each, no error)
        D("cmyk-jpeg", lambda f, x: x.image(f / "cmyk.jpg", mode="CMYK", color=(0, 50, 100, 0)), rc=0,
          also=("3 images OK",)),
        D("palette-png", lambda f, x: x.image(f / "pal.png", mode="P", color=3), rc=0, also=("3 images OK",)),
        D("16-bit-png", lambda f, x: x.image(f / "g16.png", mode="I;16", color=40000), rc=0, also=("3 images OK",)),
        D("animated-gif", lambda f, x: x.image(f / "anim.gif"), rc=0, also=("3 images OK",)),
        D("jpeg-named-png", lambda f, x: x.image(f / "photo.png", fmt="JPEG"), rc=0, also=("3 images OK",)),
    ]


def _cases_skipped_and_twice() -> list[C]:
    return [
        D("dangling-link", _link, rc=0, file="gone.png", fix="does not exist"),
        D("tiff-skipped", lambda f, x: x.image(f / "scan.tiff"), rc=0, file="scan.tiff", fix="convert it to PNG"),
        D("heic-skipped", lambda f, x: x.raw(f, "phone.heic", b"\0\0\0\x18ftypheic"), rc=0, file="phone.heic",
          fix="convert it to PNG"),
        D("duplicate-images", lambda f, x: x.raw(f, "copy.png", (f / "img0.png").read_bytes()), rc=0,
          file="copy.png", fix="remove all but one"),
        D("long-caption", lambda f, x: x.text(f / "img0.txt", " ".join(["photo"] * 200)), rc=0, file="img0.png",
          field="77 tokens", fix="the longest: 202 tokens"),
        D("caption-extension-mismatch", lambda f, x: x.text(f / "img0.txt", "a red cube"), rc=0, file="img0.txt",
          field="dataset.caption_extension", fix=".txt", more=("dataset.caption_extension='.caption'",)),
        D("caption-is-a-folder", lambda f, x: (f / "img0.txt").mkdir(), rc=0, file="img0.txt", fix="folder"),
        D("caption-bom", lambda f, x: x.raw(f, "img0.txt", "\ufeffa red cube".encode()), rc=0,
          also=("2 images OK",)),
    ]


def _cases_text() -> list[C]:
    row = {"file_name": "img0.png", "text": "a red cube"}
    return [
        D("caption-not-utf8", lambda f, x: x.text(f / "img0.txt", "un café", "latin-1"), file="img0.txt",
          fix="re-save it as UTF-8"),
        D("caption-utf16", lambda f, x: x.text(f / "img0.txt", "a red cube", "utf-16"), file="img0.txt",
          fix="re-save it as UTF-8"),
        D("metadata-not-utf8", _metadata(raw=json.dumps({**row, "text": "un café"}, ensure_ascii=False)
                                         .encode("latin-1")), file="metadata.jsonl", fix="re-save it as UTF-8"),
        D("metadata-missing-file", _metadata(row, {"file_name": "gone.png", "text": "x"}), file="metadata.jsonl:2",
          field="'gone.png'", fix="a typo"),
        D("metadata-misspelt-column", _metadata(row, {"file_name": "img1.png", "captoin": "x"}),
          file="metadata.jsonl:2", field="dataset.caption_column", fix="rename the field"),
        D("metadata-not-json", _metadata(row, "{file_name: img1.png}"), file="metadata.jsonl:2",
          fix="not a JSON object"),
        D("metadata-row-is-a-list", _metadata(row, '["img1.png", "x"]'), file="metadata.jsonl:2", fix="file_name"),
        D("metadata-path-outside", _metadata(row, {"file_name": "../secret.png", "text": "x"}),
          file="metadata.jsonl:2", field="'../secret.png'", fix="a typo"),
        D("metadata-caption-column-unknown", _metadata(row), file="metadata.jsonl:1",
          field="dataset.caption_column", more=("dataset.caption_column='description'",)),
    ]


def _cases_sources() -> list[C]:
    return [
        C("data/kohya-no-repeats-prefix", "data", lambda d, x: _kohya(d, x, "dog"), file="dog",
          field="dataset.train_data_dir", fix="10_sks dog"),
        C("data/kohya-zero-repeats", "data", lambda d, x: _kohya(d, x, "0_dog"), file="0_dog", fix="10_sks dog"),
        C("data/kohya-empty", "data", lambda d, x: _kohya(d, x), file="img", field="dataset.train_data_dir"),
        C("data/reg-dir-missing", "data",
          lambda d, x: _kohya(d, x, "10_dog", more=(f"dataset.reg_data_dir={str(d / 'reg')!r}",)), file="reg",
          field="dataset.reg_data_dir", fix="no such folder"),
        C("data/class-prompt-missing", "data",
          lambda d, x: [*x.train(d, "dataset.with_prior_preservation=true",
                                 f"dataset.class_data_dir={str(x.images(d / 'class'))!r}"), "--dry-run"],
          field="dataset.class_prompt"),
        C("data/kohya-toml-typo", "data",
          lambda d, x: [*x.train(d, "dataset.config_file=" + repr(str(x.text(
              d / "ds.toml", f"[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dirr = "
                             f"{str(x.images(d / 'data'))!r}\nclass_tokens = 'sks'\n")))), "--dry-run"],
          file="ds.toml", field="image_dirr", fix="image_dir"),
    ]


def data_cases() -> list[C]:
    return _cases_images() + _cases_skipped_and_twice() + _cases_text() + _cases_sources()
