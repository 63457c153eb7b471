"""Per-module LoRA operations and their reports, shared by the SD tools (`resize`, `merge_loras`, `extract`) and the
FLUX tools (`flux_tools`, `flux_models`): re-rank one module by SVD, concat / interpolate / SVD-merge the modules that
patch one weight."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..adapters import ADAPTER_LABELS, AdapterModule, module_delta, raw_delta
from ..errors import ShapeMismatchError, UnsupportedError
from .svd import RankRule, fro_share, full_svd, lowrank_svd, select_rank, shape_factors, split_factors


# ------------------------------------------------------------------------------------------------------ resize
@dataclass
class ModuleReport:
    name: str
    kind: str
    old_rank: int | None
    new_rank: int | None = None
    fro_share: float | None = None  # ‖ΔW_new‖_F / ‖ΔW‖_F
    note: str = ""


@dataclass
class ResizeResult:
    output: Path
    rule: str
    modules: list[ModuleReport] = field(default_factory=list)
    unknown: dict[str, str] = field(default_factory=dict)
    check: str = ""  # the consumer check's summary of the written file (FLUX files)

    @property
    def resized(self) -> list[ModuleReport]:
        return [m for m in self.modules if m.new_rank is not None]

    def lines(self, per_module: bool = True) -> list[str]:
        out = []
        if per_module:
            width = max((len(m.name) for m in self.modules), default=10)
            out.append(f"{'module':<{width}}  {'kind':<12} {'rank':>5}   {'new':>4}  Frobenius kept")
            for m in self.modules:
                kind = ADAPTER_LABELS.get(m.kind, m.kind)
                if m.new_rank is None:
                    out.append(f"{m.name:<{width}}  {kind:<12} {m.old_rank or '-':>5}   kept  {m.note}")
                else:
                    note = f"  {m.note}" if m.note else ""
                    out.append(f"{m.name:<{width}}  {kind:<12} {m.old_rank:>5} → {m.new_rank:>4}  "
                               f"{100 * m.fro_share:6.2f}%{note}")
        done = self.resized
        if done:
            shares = [m.fro_share for m in done]
            old = sorted({m.old_rank for m in done})
            new = sorted({m.new_rank for m in done})
            out.append(
                f"resized {len(done)} modules ({self.rule}): rank {_span(old)} → {_span(new)}, Frobenius kept "
                f"mean {100 * sum(shares) / len(shares):.2f}%, min {100 * min(shares):.2f}%"
            )
        kept = len(self.modules) - len(done)
        if kept:
            out.append(f"{kept} modules copied unchanged")
        if self.unknown:
            out.append(f"{len(self.unknown)} keys the reader does not know were copied unchanged")
        if self.check:
            out.append(f"check: {self.check}")
        out.append(f"wrote {self.output}")
        return out


def _span(values: list[int]) -> str:
    return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def resize_module(m: AdapterModule, rule: RankRule, weight: torch.Tensor | None = None, dtype=None):
    """(tensors by suffix incl. alpha, report) of one LoRA / LoCon module re-ranked by `rule`."""
    t = m.tensors
    up, down = t["lora_up.weight"], t["lora_down.weight"]
    out_dim = up.shape[0]
    if "lora_mid.weight" in t:
        kernel = t["lora_mid.weight"].shape[2:]
        u, s, vh = full_svd(raw_delta(m) * m.scale)
        up_shape, down_tail = (out_dim, -1, 1, 1), (down.shape[1], *kernel)
    else:
        u, s, vh = lowrank_svd(up.reshape(out_dim, -1), down.flatten(1), m.scale)
        up_shape, down_tail = (out_dim, -1, *up.shape[2:]), tuple(down.shape[1:])
    wshape = (out_dim, *down_tail)
    k = min(select_rank(s, rule, m.is_conv, weight, wshape), m.rank)  # never above the old rank
    alpha_scale = m.scale if m.alpha is not None else 1.0
    rescale = rule.recipe.get("rescale", 1.0)
    new_up, new_down = split_factors(u, s * rescale, vh, k, alpha_scale)
    out_dtype = dtype or up.dtype
    tensors = {
        "lora_up.weight": new_up.reshape(up_shape).to(out_dtype).contiguous(),
        "lora_down.weight": new_down.reshape(k, *down_tail).to(out_dtype).contiguous(),
    }
    note = ""
    if "dora_scale" in t:
        tensors["dora_scale"] = t["dora_scale"]
        if k < len(s):
            note = "dora_scale copied (approximate after the cut)"
    if m.alpha is not None:
        like = m.alpha_tensor if m.alpha_tensor is not None else torch.tensor(0.0)
        tensors["alpha"] = torch.tensor(alpha_scale * k, dtype=like.dtype)
    report = ModuleReport(m.name, m.kind, m.rank, k, fro_share(s, k), note)
    return tensors, report



# ------------------------------------------------------------------------------------------------- merge loras
@dataclass
class LoraMergeResult:
    output: Path
    mode: str
    modules: dict[tuple[str, str], tuple[list[int], int, float | None]] = field(default_factory=dict)
    check: str = ""  # the consumer check's summary of the written file (FLUX files)

    def lines(self) -> list[str]:
        shares = [s for *_, s in self.modules.values() if s is not None]
        ranks = sorted({r for _, r, _ in self.modules.values()})
        span = f"{ranks[0]}" + (f"–{ranks[-1]}" if len(ranks) > 1 else "")
        tail = f", Frobenius kept mean {100 * sum(shares) / len(shares):.2f}%, min {100 * min(shares):.2f}%" if shares else ""
        check = [f"check: {self.check}"] if self.check else []
        return [f"{self.mode}: {len(self.modules)} modules, rank {span}{tail}", *check, f"wrote {self.output}"]


def plain_only(items, mode: str) -> None:
    for m, _ in items:
        if m.kind != "lora" or "dora_scale" in m.tensors:
            what = "DoRA" if "dora_scale" in m.tensors else ADAPTER_LABELS.get(m.kind, m.kind)
            raise UnsupportedError(f"{mode} merges plain LoRA / LoCon modules only; {m.name} is {what}: use --mode "
                                   "svd (or merge the files into the model)")


def named(items) -> str:
    return next((m.name for m, _ in items if "." not in m.name), items[0][0].name)


def concat_modules(items) -> AdapterModule:
    plain_only(items, "concat")
    first_up, first_down = items[0][0].tensors["lora_up.weight"], items[0][0].tensors["lora_down.weight"]
    ups, downs = [], []
    for m, w in items:
        up, down = m.tensors["lora_up.weight"].float(), m.tensors["lora_down.weight"].float()
        if down[0].numel() != first_down[0].numel():
            raise ShapeMismatchError(f"{m.name}: down {tuple(down.shape)} vs {tuple(first_down.shape)}")
        ups.append(up.reshape(up.shape[0], -1) * (w * m.scale))
        downs.append(down.reshape(down.shape[0], *first_down.shape[1:]))
    up = torch.cat(ups, dim=1)
    up = up.reshape(up.shape[0], up.shape[1], *first_up.shape[2:])
    down = torch.cat(downs, dim=0)
    return AdapterModule(named(items), {"lora_up.weight": up, "lora_down.weight": down}, float(down.shape[0]))


def interpolate_modules(items) -> AdapterModule:
    plain_only(items, "interpolate")
    ranks = {m.rank for m, _ in items}
    if len(ranks) != 1:
        raise UnsupportedError(f"{items[0][0].name}: interpolation needs equal ranks, got {sorted(ranks)}; "
                               "use --mode svd")
    (m1, a), (m2, b) = items
    up = a * m1.scale * m1.tensors["lora_up.weight"].float() + b * m2.scale * m2.tensors["lora_up.weight"].float()
    down = a * m1.tensors["lora_down.weight"].float() + b * m2.tensors["lora_down.weight"].float()
    return AdapterModule(named(items), {"lora_up.weight": up, "lora_down.weight": down}, float(m1.rank))


def svd_module(items, shape, rule: RankRule) -> tuple[AdapterModule, float]:
    total = torch.zeros(shape)
    for m, w in items:
        if "dora_scale" in m.tensors:
            raise UnsupportedError(f"{m.name}: DoRA needs the base weight; merge the file into the model instead")
        total += w * module_delta(m, shape)
    u, s, vh = full_svd(total.flatten(1))
    conv = len(shape) == 4 and tuple(shape[2:]) != (1, 1)
    k = select_rank(s, rule, conv, None, tuple(shape))
    like = next((m.tensors.get("lora_up.weight") for m, _ in items if "lora_up.weight" in m.tensors), None)
    up, down = shape_factors(*split_factors(u, s, vh, k), tuple(shape), like)
    return AdapterModule(named(items), {"lora_up.weight": up, "lora_down.weight": down}, float(k)), fro_share(s, k)


# ----------------------------------------------------------------------------------------------------- extract
@dataclass
class ExtractResult:
    output: Path
    rule: str
    modules: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)  # target -> (rank, share)
    skipped: dict[str, str] = field(default_factory=dict)  # part.path -> why a changed weight was not extracted
    check: str = ""  # the consumer check's summary of the written file (FLUX files)

    def lines(self, per_module: bool = False) -> list[str]:
        out = []
        if per_module:
            for (part, path), (k, share) in self.modules.items():
                out.append(f"{part:<4} {path:<70} rank {k:>4}  {100 * share:6.2f}%")
        by_part: dict[str, int] = {}
        for part, _ in self.modules:
            by_part[part] = by_part.get(part, 0) + 1
        shares = [s for _, s in self.modules.values()]
        ranks = sorted({k for k, _ in self.modules.values()})
        if shares:
            out.append(
                f"extracted {len(self.modules)} modules ({', '.join(f'{p} {n}' for p, n in by_part.items())}; "
                f"{self.rule}): rank {ranks[0]}{'–' + str(ranks[-1]) if len(ranks) > 1 else ''}, Frobenius kept "
                f"mean {100 * sum(shares) / len(shares):.2f}%, min {100 * min(shares):.2f}%"
            )
        if self.skipped:
            out.append(f"not extracted ({len(self.skipped)}): " + "; ".join(
                f"{k} ({v})" for k, v in list(self.skipped.items())[:8]))
        if self.check:
            out.append(f"check: {self.check}")
        out.append(f"wrote {self.output}")
        return out


def merge_module(items, mode: str, shape, rule: RankRule | None, target: tuple[str, str], dtype=None):
    """One module from `items` ((module, weight) pairs on the same layer `target` = (part, path) of weight `shape`)
    by `mode` (svd, concat, interpolate; a single item is kept as concat), in `dtype` (None: the first item's);
    returns (module, the SVD's kept energy share or None)."""
    if mode == "svd":
        module, share = svd_module(items, shape, rule)
    elif mode == "concat" or len(items) == 1:
        module, share = concat_modules(items), None
    else:
        module, share = interpolate_modules(items), None
    module.part, module.path = target
    out_dtype = dtype or next(iter(items[0][0].tensors.values())).dtype
    module.tensors = {k: v.to(out_dtype).contiguous() for k, v in module.tensors.items()}
    return module, share
