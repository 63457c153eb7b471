"""`loraforge merge loras`: LoRA with LoRA, three ways (seed-practices.md §14, kohya.md §3.2).

* `concat` (exact): ΔW = Σ wᵢ·ΔWᵢ written with the ranks side by side: `up = [w₁s₁·up₁ | w₂s₂·up₂ | ...]`,
  `down = [down₁; down₂; ...]`, alpha = total rank. Plain LoRA / LoCon only (no Tucker, LoHa, LoKr, DoRA).
  kohya's merge_lora adds up and down separately instead, which creates cross terms; this does not.
* `svd`: ΔW = Σ wᵢ·ΔWᵢ of any algorithm, re-factored by SVD to a target rank or by a quality rule (kohya's
  svd_merge_lora); alpha = rank.
* `interpolate` (cloneofsimo/lora): two files of equal rank, `ΔW = (αA₁ + (1−α)A₂)(αB₁ + (1−α)B₂)ᵀ`, each file's
  alpha/rank folded into its up factor first. A module only one of the files has keeps its linear share
  (α·ΔW₁ or (1−α)·ΔW₂).

Modules are matched by the model module they patch, so files in different naming styles (diffusers / LDM / SGM
kohya names, diffusers keys) merge. Names are resolved against `base` (any model), or the full-size model of the
family.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..adapters import ADAPTER_LABELS, AdapterModule, module_delta
from ..formats.file_kind import require_kind
from ..formats.kohya import kohya_state_dict
from ..formats.lora_file import bind, load_lora_file, weak_evidence
from .common import check_output, lora_metadata, model_tree, save_lora
from ..errors import FamilyMismatchError, ShapeMismatchError, ToolError, UnsupportedError
from .svd import RankRule, fro_share, full_svd, select_rank, shape_factors, split_factors


MODES = ("concat", "svd", "interpolate")


@dataclass
class LoraMergeResult:
    output: Path
    mode: str
    modules: dict[tuple[str, str], tuple[list[int], int, float | None]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        shares = [s for *_, s in self.modules.values() if s is not None]
        ranks = sorted({r for _, r, _ in self.modules.values()})
        span = f"{ranks[0]}" + (f"–{ranks[-1]}" if len(ranks) > 1 else "")
        tail = f", Frobenius kept mean {100 * sum(shares) / len(shares):.2f}%, min {100 * min(shares):.2f}%" if shares else ""
        return [f"{self.mode}: {len(self.modules)} modules, rank {span}{tail}", f"wrote {self.output}"]


def _family(loras, family: str) -> str:
    strong = {lf.family for lf in loras if not weak_evidence(lf.family_evidence)}
    if len(strong) > 1:
        raise FamilyMismatchError("the LoRA files are for different families: " + ", ".join(
            f"{lf.source} ({lf.family})" for lf in loras))
    if family not in (None, "auto"):
        if strong and family not in strong:
            raise FamilyMismatchError(f"the LoRA files are {strong.pop()}, not {family}")
        return family
    return strong.pop() if strong else loras[0].family


def merge_loras(inputs: list[tuple[str, float]], output, *, mode: str = "concat", rule: RankRule | None = None,
                alpha: float = 0.5, base: str | None = None, family: str = "auto", dtype=None,
                allow_pickle: bool = False, skip_unknown: bool = False, overwrite: bool = False) -> LoraMergeResult:
    """Merge `inputs` [(path, weight), ...] into one kohya LoRA file (weights are ignored by `interpolate`)."""
    if mode not in MODES:
        raise ToolError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if len(inputs) < 2:
        raise ToolError("name at least two LoRA files to merge")
    if mode == "interpolate" and len(inputs) != 2:
        raise ToolError("interpolate takes exactly two LoRA files (use concat or svd for more)")
    if mode == "svd" and (rule is None or (rule.rank is None and rule.method is None)):
        raise ToolError("svd needs a target rank (--rank) or a quality rule (--sv-fro 0.99, ...)")
    output = check_output(output, overwrite)
    for path, _ in inputs:
        require_kind(path, ("lora",), "merge loras", ToolError)
    loras = [load_lora_file(path, allow_pickle) for path, _ in inputs]
    fam = _family(loras, family)
    tree = model_tree(base, fam, allow_pickle, tiny=all(lf.tiny for lf in loras) and family in (None, "auto"))
    for lf in loras:
        bind(lf, tree)
        lf.require_known(skip_unknown)
    weights = [w for _, w in inputs] if mode != "interpolate" else [alpha, 1.0 - alpha]
    targets: dict[tuple[str, str], list[tuple[AdapterModule, float]]] = {}
    for lf, w in zip(loras, weights):
        for target, m in lf.by_target().items():
            targets.setdefault(target, []).append((m, w))
    result = LoraMergeResult(output, mode)
    merged: list[AdapterModule] = []
    for target, items in targets.items():
        shape = tree.shape(*target)
        if mode == "svd":
            module, share = _svd(items, shape, rule)
        elif mode == "concat" or len(items) == 1:
            module, share = _concat(items), None
        else:
            module, share = _interpolate(items), None
        module.part, module.path = target
        out_dtype = dtype or next(iter(items[0][0].tensors.values())).dtype
        module.tensors = {k: v.to(out_dtype).contiguous() for k, v in module.tensors.items()}
        module.alpha_tensor = torch.tensor(module.alpha, dtype=out_dtype)
        merged.append(module)
        result.modules[target] = ([m.rank or 0 for m, _ in items], module.rank, share)
    meta = lora_metadata(None, fam, merge=json.dumps({"mode": mode, "inputs": [[p, w] for p, w in inputs],
                                                     **({"alpha": alpha} if mode == "interpolate" else {})}))
    ranks = {m.rank for m in merged}
    meta.update(ss_network_module="networks.lora", ss_network_dim=str(ranks.pop()) if len(ranks) == 1 else "Dynamic")
    meta["ss_network_alpha"] = meta["ss_network_dim"]
    save_lora(kohya_state_dict(merged, tree.family, tree.unet_config, naming="keep"), output, meta, overwrite)
    return result


def _plain(items, mode: str) -> None:
    for m, _ in items:
        if m.kind != "lora" or "dora_scale" in m.tensors:
            what = "DoRA" if "dora_scale" in m.tensors else ADAPTER_LABELS.get(m.kind, m.kind)
            raise UnsupportedError(f"{mode} merges plain LoRA / LoCon modules only; {m.name} is {what}: use --mode "
                                   "svd (or merge the files into the model)")


def _named(items) -> str:
    return next((m.name for m, _ in items if "." not in m.name), items[0][0].name)


def _concat(items) -> AdapterModule:
    _plain(items, "concat")
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
    return AdapterModule(_named(items), {"lora_up.weight": up, "lora_down.weight": down}, float(down.shape[0]))


def _interpolate(items) -> AdapterModule:
    _plain(items, "interpolate")
    ranks = {m.rank for m, _ in items}
    if len(ranks) != 1:
        raise UnsupportedError(f"{items[0][0].name}: interpolation needs equal ranks, got {sorted(ranks)}; "
                               "use --mode svd")
    (m1, a), (m2, b) = items
    up = a * m1.scale * m1.tensors["lora_up.weight"].float() + b * m2.scale * m2.tensors["lora_up.weight"].float()
    down = a * m1.tensors["lora_down.weight"].float() + b * m2.tensors["lora_down.weight"].float()
    return AdapterModule(_named(items), {"lora_up.weight": up, "lora_down.weight": down}, float(m1.rank))


def _svd(items, shape, rule: RankRule) -> tuple[AdapterModule, float]:
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
    return AdapterModule(_named(items), {"lora_up.weight": up, "lora_down.weight": down}, float(k)), fro_share(s, k)
