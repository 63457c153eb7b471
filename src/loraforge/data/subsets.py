"""All image sources of a run, resolved into subsets (a folder with its repeats, captions and flags) and groups
(a kohya `[[datasets]]` entry: resolution, buckets, batch size), with every image and its caption. The plan of a
kohya dataset config file is `data.kohya_toml`; `data.build.collect_all` picks one of the two."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config.dataset import SUBSET_OVERRIDABLE, DatasetConfig, bucket_problems, default_bucket_limits, pixel_size
from .buckets import BucketSettings
from .captions import CaptionOptions, tag_frequency
from ..errors import DataError
from .hub import dataset_items
from .sources import (
    DEMO_INSTANCE_PROMPT,
    ImageItem,
    collect_folder,
    demo_dir,
    list_images,
    skipped_files,
    uncaptioned_error,
    unread_captions,
)

log = logging.getLogger(__name__)

_REPEATS_FOLDER = re.compile(r"^(\d+)(?:_(.*))?$")


@dataclass(frozen=True)
class Subset:
    name: str  # the folder (or dataset) it comes from, for messages and the metadata
    image_dir: Path | None
    num_repeats: int = 1
    is_reg: bool = False
    captions: CaptionOptions = CaptionOptions()
    random_flip: bool = False
    random_crop: bool = False
    color_aug: bool = False
    face_crop_aug_range: tuple[float, float] | None = None  # kohya's face crop (`images.face_crop`)
    class_tokens: str | None = None
    caption_extension: str = ".txt"
    group: int = 0
    kind: str = "folder"  # "folder", "class" (prior preservation), "dataset" (`datasets` library), "demo"
    where: str = "image_dir"  # the option that named it, for messages
    fallback_source: str = "class_tokens"  # what an image without a caption is captioned with


@dataclass(frozen=True)
class Group:
    buckets: BucketSettings
    batch_size: int


@dataclass
class DataPlan:
    subsets: list[Subset]
    groups: list[Group]
    items: list[ImageItem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # for the dataset summary: skipped files with the reason

    def run_info(self) -> dict:
        """What the `ss_*` metadata wants: image counts, folders with repeats, tag frequencies."""
        dirs: dict = {}
        freq: dict = {}
        for i, s in enumerate(self.subsets):
            items = [it for it in self.items if it.subset == i]
            dirs[s.name] = {"n_repeats": s.num_repeats, "img_count": len(items)}
            freq[s.name] = tag_frequency([it.caption for it in items], s.captions.separator)
        reg = sum(1 for it in self.items if self.subsets[it.subset].is_reg)
        return {
            "num_train_images": len(self.items) - reg,
            "num_reg_images": reg,
            "dataset_dirs": dirs,
            "tag_frequency": freq,
        }


def _face_range(value) -> tuple[float, float] | None:
    return None if value is None else (float(value[0]), float(value[1]))


def group_from(d: DatasetConfig, resolution, batch_size: int, where: str = "dataset.") -> Group:
    """A group from `[dataset]`-style bucket fields (`d` may be any object with those names)."""
    res = pixel_size(resolution)
    if d.enable_bucket and not d.bucket_no_upscale:
        problems = bucket_problems(res, d.min_bucket_reso, d.max_bucket_reso, d.bucket_reso_steps, where)
        if problems:
            raise DataError("the bucket settings do not fit the resolution", problems)
    lo, hi = default_bucket_limits(res, d.min_bucket_reso, d.max_bucket_reso, d.bucket_reso_steps)
    settings = BucketSettings(res, d.enable_bucket, lo, hi, d.bucket_reso_steps, d.bucket_no_upscale)
    return Group(settings, batch_size)


def resolve_subset(values, d: DatasetConfig, *, where: str, group: int = 0) -> Subset:
    """A `SubsetConfig` (or anything with its fields), its unset options taken from `[dataset]` `d`."""

    def get(name):
        v = getattr(values, name, None)
        return getattr(d, name) if v is None else v

    view = type("View", (), {n: get(n) for n in SUBSET_OVERRIDABLE})()
    repeats = getattr(values, "num_repeats", None)
    return Subset(
        name=str(values.image_dir),
        image_dir=Path(values.image_dir).expanduser(),
        num_repeats=repeats if repeats is not None else d.repeats,
        is_reg=bool(getattr(values, "is_reg", False)),
        captions=CaptionOptions.from_config(view),
        random_flip=view.random_flip,
        random_crop=not view.center_crop,
        color_aug=view.color_aug,
        face_crop_aug_range=_face_range(view.face_crop_aug_range),
        class_tokens=getattr(values, "class_tokens", None) or d.instance_prompt,
        caption_extension=view.caption_extension,
        group=group,
        where=where,
    )


def repeat_folders(root: str, is_reg: bool, d: DatasetConfig) -> list[Subset]:
    """kohya's `N_name` convention: `root/10_sks dog/` is a subset repeated 10 times captioned `sks dog` by default."""
    what = "dataset.reg_data_dir" if is_reg else "dataset.train_data_dir"
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DataError(f"{what} = {root!r}: no such folder")
    out = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        m = _REPEATS_FOLDER.match(sub.name)
        if not m:
            log.warning("%s: %s is not named N_name (e.g. 10_sks dog); skipped", what, sub)
            continue
        if int(m.group(1)) < 1:
            log.warning("%s: %s has 0 repeats and is skipped; class (regularisation) images go in an N_name folder "
                        "of dataset.reg_data_dir, repeated there to as many per epoch as the training images", what, sub)
            continue
        values = type("Values", (), {"image_dir": str(sub), "num_repeats": int(m.group(1)),
                                     "class_tokens": m.group(2) or None, "is_reg": is_reg})()
        out.append(resolve_subset(values, d, where=f"{what} subfolder"))
    if list_images(folder):
        log.warning("%s: images directly in %s are not used; put them in an N_name subfolder", what, folder)
    if not out:
        raise DataError(f"{what} = {root!r} has no N_name subfolder (e.g. `10_sks dog`) with images")
    return out


def native_plan(cfg, resolution: tuple[int, int]) -> DataPlan:
    """The subsets of `[dataset]` without a kohya config file."""
    d = cfg.dataset
    plain = CaptionOptions.from_config(d)
    flags = {"random_flip": d.random_flip, "random_crop": not d.center_crop, "color_aug": d.color_aug,
             "face_crop_aug_range": _face_range(d.face_crop_aug_range), "caption_extension": d.caption_extension}
    subsets: list[Subset] = []
    if d.instance_dir:
        subsets.append(Subset(d.instance_dir, Path(d.instance_dir).expanduser(), d.repeats, False, plain,
                              class_tokens=d.instance_prompt, where="dataset.instance_dir",
                              fallback_source="instance_prompt", **flags))
    if d.train_data_dir:
        subsets += repeat_folders(d.train_data_dir, False, d)
    subsets += [resolve_subset(s, d, where=f"dataset.subsets[{i}].image_dir") for i, s in enumerate(d.subsets)]
    if d.dataset_name:
        subsets.append(Subset(d.dataset_name, None, d.repeats, False, plain, class_tokens=d.instance_prompt,
                              kind="dataset", where="dataset.dataset_name", fallback_source="instance_prompt",
                              **flags))
    if not any(not s.is_reg for s in subsets):
        prompt = d.instance_prompt or DEMO_INSTANCE_PROMPT
        subsets.append(Subset("demo", demo_dir(), d.repeats, False, plain, class_tokens=prompt, kind="demo",
                              where="demo images", fallback_source="instance_prompt", **flags))
    if d.reg_data_dir:
        subsets += repeat_folders(d.reg_data_dir, True, d)
    if d.with_prior_preservation:
        # Class images keep their prompt as it is: the caption options are for the instance captions.
        subsets.append(Subset(d.class_data_dir, Path(d.class_data_dir).expanduser(), 1, True, CaptionOptions(),
                              class_tokens=d.class_prompt, kind="class", where="dataset.class_data_dir",
                              fallback_source="class_prompt", **flags))
    groups = [group_from(d, resolution, cfg.training.batch_size)]
    return DataPlan(subsets, groups)


def collect_plan_items(plan: DataPlan, d: DatasetConfig) -> DataPlan:
    """Fill `plan.items`: every image of every subset with its caption; `DataError` lists uncaptioned ones."""
    items: list[ImageItem] = []
    uncaptioned: list[Path] = []
    for i, s in enumerate(plan.subsets):
        if s.kind == "dataset":
            items += dataset_items(d, s, i)
            continue
        if s.kind == "class":
            items += _class_items(s, d, i)
            continue
        new, missing = collect_folder(
            s.image_dir,
            caption_extension=s.caption_extension,
            metadata_file=d.metadata_file,
            caption_column=d.caption_column,
            fallback=s.class_tokens,
            fallback_source=s.fallback_source,
            subset=i,
            all_lines=s.captions.enable_wildcard,
            what=s.where,
        )
        items += new
        uncaptioned += missing
        plan.notes += skipped_files(s.image_dir) + unread_captions(s.image_dir, s.caption_extension)
    if uncaptioned:
        raise uncaptioned_error(
            uncaptioned, ", ".join(sorted({s.caption_extension for s in plan.subsets})), d.metadata_file,
            "set dataset.instance_prompt (or the subset's class_tokens) to caption them",
        )
    plan.items = items
    return plan


def _class_items(s: Subset, d: DatasetConfig, index: int) -> list[ImageItem]:
    folder = s.image_dir
    if not folder.is_dir() or not list_images(folder):
        raise DataError(
            f"dataset.class_data_dir = {s.name!r} holds no class images; they are generated from "
            "dataset.class_prompt before training (a run with a model does it), or put some there"
        )
    items, _ = collect_folder(
        folder, caption_extension=s.caption_extension, metadata_file=d.metadata_file, caption_column=d.caption_column,
        fallback=s.class_tokens, fallback_source="class_prompt", subset=index, what="dataset.class_data_dir",
    )
    if len(items) < d.num_class_images:
        log.warning("dataset.class_data_dir has %d of the %d class images wanted (dataset.num_class_images); "
                    "training with those", len(items), d.num_class_images)
    return items[: d.num_class_images]

