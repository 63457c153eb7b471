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
family. FLUX.1 files are merged by `tools.flux_tools` (the same three modes).
"""

from __future__ import annotations

import json

import torch

from ..adapters import AdapterModule
from ..families.flux import FLUX
from ..formats.file_kind import require_kind
from ..formats.kohya import kohya_state_dict
from ..formats.lora_file import bind, load_lora_file, weak_evidence
from .common import check_output, lora_metadata, model_tree, refuse_layout, save_lora
from .flux_sources import flux_lora_file
from .flux_tools import merge_flux_loras, refuse_mixed
from ..errors import FamilyMismatchError, ToolError
from .lora_ops import LoraMergeResult, merge_module
from .svd import RankRule


MODES = ("concat", "svd", "interpolate")


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
                allow_pickle: bool = False, skip_unknown: bool = False, overwrite: bool = False,
                to: str | None = None, config_dir: str | None = None) -> LoraMergeResult:
    """Merge `inputs` [(path, weight), ...] into one kohya LoRA file (weights are ignored by `interpolate`). FLUX.1
    files go to `tools.flux_tools` (written in the first file's layout, or `to`); FLUX and SD files do not mix."""
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
    evidence = [flux_lora_file(path, allow_pickle) for path, _ in inputs]
    refuse_mixed([path for path, _ in inputs], evidence)
    if family == FLUX or (family in (None, "auto") and all(evidence)):
        return merge_flux_loras(inputs, output, mode=mode, rule=rule, alpha=alpha, to=to, base=base,
                                config_dir=config_dir, dtype=dtype, allow_pickle=allow_pickle,
                                skip_unknown=skip_unknown, overwrite=overwrite)
    if any(evidence):
        raise FamilyMismatchError(f"the LoRA files are FLUX.1 LoRAs, not {family}")
    refuse_layout(to)
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
        module, share = merge_module(items, mode, tree.shape(*target), rule, target, dtype)
        module.alpha_tensor = torch.tensor(module.alpha, dtype=next(iter(module.tensors.values())).dtype)
        merged.append(module)
        result.modules[target] = ([m.rank or 0 for m, _ in items], module.rank, share)
    meta = lora_metadata(None, fam, merge=json.dumps({"mode": mode, "inputs": [[p, w] for p, w in inputs],
                                                     **({"alpha": alpha} if mode == "interpolate" else {})}))
    ranks = {m.rank for m in merged}
    meta.update(ss_network_module="networks.lora", ss_network_dim=str(ranks.pop()) if len(ranks) == 1 else "Dynamic")
    meta["ss_network_alpha"] = meta["ss_network_dim"]
    save_lora(kohya_state_dict(merged, tree.family, tree.unet_config, naming="keep"), output, meta, overwrite)
    return result
