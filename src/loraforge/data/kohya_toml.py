"""kohya's dataset config file (`--dataset_config`, kohya.md §1.5): `[general]`, `[[datasets]]`,
`[[datasets.subsets]]`, as TOML (or JSON).

Precedence as in sd-scripts: subset > dataset > general > the `[dataset]` section of the loraforge config (which
plays the role of sd-scripts' command-line arguments) > defaults. Every key is checked: an unknown one is an error
naming the table and the closest valid key, and the sd-scripts options loraforge does not implement are refused
unless they hold their no-op default (so files written by GUIs with every key still load).
"""

from __future__ import annotations

import difflib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..config.dataset import SubsetConfig, parse_resolution, pixel_size
from ..errors import DataError
from .subsets import DataPlan, group_from, resolve_subset

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)

# kohya name -> (loraforge SubsetConfig name, value conversion)
SUBSET_ASCENDABLE = {
    "num_repeats": ("num_repeats", None),
    "shuffle_caption": ("shuffle_caption", None),
    "keep_tokens": ("keep_tokens", None),
    "keep_tokens_separator": ("keep_tokens_separator", None),
    "secondary_separator": ("secondary_separator", None),
    "caption_separator": ("caption_separator", None),
    "enable_wildcard": ("enable_wildcard", None),
    "caption_prefix": ("caption_prefix", None),
    "caption_suffix": ("caption_suffix", None),
    "caption_dropout_rate": ("caption_dropout_rate", None),
    "caption_dropout_every_n_epochs": ("caption_dropout_every_n_epochs", None),
    "caption_tag_dropout_rate": ("caption_tag_dropout_rate", None),
    "caption_extension": ("caption_extension", None),
    "class_tokens": ("class_tokens", None),
    "flip_aug": ("random_flip", None),
    "color_aug": ("color_aug", None),
    "face_crop_aug_range": ("face_crop_aug_range", None),
    "random_crop": ("center_crop", lambda v: not v if isinstance(v, bool) else v),
}
SUBSET_ONLY = ("image_dir", "is_reg")
DATASET_KEYS = ("resolution", "batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso",
                "bucket_reso_steps", "bucket_no_upscale")
# sd-scripts options loraforge does not implement, with the values that mean "off".
UNSUPPORTED = {
    "token_warmup_min": 1, "token_warmup_step": 0,
    "alpha_mask": False, "cache_info": False, "validation_split": 0, "validation_seed": None,
    "network_multiplier": 1.0, "custom_attributes": {}, "resize_interpolation": None, "metadata_file": None,
    "conditioning_data_dir": None,
}


def read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"dataset.config_file = {str(path)!r}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'} file: {e}") from None


class _Checker:
    def __init__(self, path: Path):
        self.path, self.problems = path, []

    def keys(self, table: dict, allowed, where: str) -> dict:
        """The table without unknown or refused keys; problems recorded."""
        out = {}
        for key, value in table.items():
            if key in allowed:
                out[key] = value
            elif key in UNSUPPORTED:
                if value != UNSUPPORTED[key]:
                    self.problems.append(f"{self.path}: {where}: {key} = {value!r} is an sd-scripts option loraforge "
                                         "does not implement; remove it")
            else:
                close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
                hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(sorted(allowed))}"
                self.problems.append(f"{self.path}: unknown key '{key}' in {where}; {hint}")
        return out


def _resolution(value, where: str, problems: list[str]):
    try:
        return pixel_size(parse_resolution(value))
    except ValueError as e:
        problems.append(f"{where}: resolution = {value!r}: {e}")
        return None


def _image_dir(value: str, base: Path) -> str:
    """Relative to the working folder as in sd-scripts; failing that, relative to the config file."""
    p = Path(value).expanduser()
    if not p.is_absolute() and not p.exists() and (base / p).exists():
        return str(base / p)
    return str(p)


def _group_view(values: dict, d):
    names = ("enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "bucket_no_upscale")
    return type("GroupView", (), {n: values.get(n, getattr(d, n)) for n in names})()


def plan_from_file(cfg, resolution: tuple[int, int]) -> DataPlan:
    d = cfg.dataset
    path = Path(d.config_file).expanduser()
    data = read_file(path)
    check = _Checker(path)
    top = check.keys(data, {"general": 1, "datasets": 1}, "the top level")
    general = top.get("general", {}) or {}
    general = check.keys(general, {**SUBSET_ASCENDABLE, **dict.fromkeys(DATASET_KEYS)}, "[general]")
    datasets = top.get("datasets", []) or []
    if not datasets:
        check.problems.append(f"{path}: no [[datasets]] table")
    subsets, groups = [], []
    for i, ds in enumerate(datasets):
        where = f"[[datasets]] #{i + 1}"
        ds = check.keys(ds, {**SUBSET_ASCENDABLE, **dict.fromkeys(DATASET_KEYS), "subsets": 1}, where)
        level = {**{k: v for k, v in general.items() if k in DATASET_KEYS},
                 **{k: v for k, v in ds.items() if k in DATASET_KEYS}}
        res = _resolution(level["resolution"], f"{path}: {where}", check.problems) if "resolution" in level else None
        batch = level.get("batch_size", cfg.training.batch_size)
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            check.problems.append(f"{path}: {where}: batch_size = {batch!r}: expected an integer >= 1")
            batch = 1
        try:
            groups.append(group_from(_group_view(level, d), res or resolution, batch, where=f"{path}: {where}: "))
        except DataError as e:
            check.problems += e.problems
        seen = []
        for j, sub in enumerate(ds.get("subsets", []) or []):
            swhere = f"[[datasets.subsets]] #{j + 1} of {where}"
            sub = check.keys(sub, {**SUBSET_ASCENDABLE, **dict.fromkeys(SUBSET_ONLY)}, swhere)
            merged = {**{k: v for k, v in general.items() if k in SUBSET_ASCENDABLE},
                      **{k: v for k, v in ds.items() if k in SUBSET_ASCENDABLE}, **sub}
            if merged in seen:
                log.warning("%s: %s repeats an earlier subset of the same dataset; skipped (as sd-scripts does)",
                            path, swhere)
                continue
            seen.append(merged)
            values = {}
            for key, value in merged.items():
                name, convert = SUBSET_ASCENDABLE.get(key, (key, None))
                values[name] = convert(value) if convert else value
            if "image_dir" in values and isinstance(values["image_dir"], str):
                values["image_dir"] = _image_dir(values["image_dir"], path.parent)
            try:
                sc = SubsetConfig.model_validate(values)
            except ValidationError as err:
                for e in err.errors():
                    key = ".".join(str(x) for x in e["loc"]) or "?"
                    kohya = {v[0]: k for k, v in SUBSET_ASCENDABLE.items()}.get(key, key)
                    shown = "" if e["type"] == "missing" else f" = {e.get('input')!r}"
                    check.problems.append(f"{path}: {swhere}: {kohya}{shown}: {e['msg']}")
                continue
            subsets.append(resolve_subset(sc, d, where=f"{path}: {swhere}: image_dir", group=i))
        if not ds.get("subsets"):
            check.problems.append(f"{path}: {where} has no [[datasets.subsets]]")
    if check.problems:
        raise DataError(f"{path}: {len(check.problems)} problem(s) in the dataset config file", check.problems)
    return DataPlan(subsets, groups)
