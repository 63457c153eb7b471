"""`loraforge resize`: re-rank a LoRA / LoCon file by SVD (kohya's resize_lora rules and resize_lora's recipes).

Per module ΔW = (alpha/r)·up@down is decomposed without forming it (QR of both factors, SVD of the r×r core;
Tucker LoCon modules are rebuilt in full first and come out as plain LoCon), the rank rule of `tools.svd` picks how
many directions stay, and the factors are written so that the consumers' scale is unchanged:
`up = U·√(S/αf)`, `down = √(S/αf)·Vᵀ`, `alpha = αf·new_rank` with αf = alpha/r ("alpha semantics kept"; a module
without alpha stays without). `dora_scale` is copied (exact at full rank only). LoHa / LoKr / full modules and keys
the reader does not know are copied unchanged and listed. A diffusers-layout input comes out in the kohya layout
(names resolved against `base` or the family's full-size model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..adapters import ADAPTER_LABELS, AdapterModule, raw_delta
from ..formats.file_kind import require_kind
from ..formats.kohya import kohya_module_name
from ..formats.lora_file import ModelTree, bind, read_lora_state_dict, read_tensors
from .common import check_output, load_sd_model, lora_metadata, model_parts, model_tree, save_lora
from ..errors import ToolError
from .svd import RankRule, fro_share, full_svd, lowrank_svd, select_rank, split_factors



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


def resize_lora(src, output, rule: RankRule, *, base: str | None = None, family: str = "auto", dtype=None,
                allow_pickle: bool = False, overwrite: bool = False, config_dir: str | None = None) -> ResizeResult:
    """Re-rank every LoRA / LoCon module of `src` and write `output`. `base` (any model name `load_model` takes)
    is needed for recipes that reference the checkpoint (`fro_ckpt`, `spn_ckpt`)."""
    output = check_output(output, overwrite)
    require_kind(src, ("lora",), "resize", ToolError)
    sd, metadata = read_tensors(src, allow_pickle)
    lora = read_lora_state_dict(sd, metadata, source=str(src))
    lora.require_finite()
    fam = family if family != "auto" else lora.family
    weights, tree = {}, None
    if rule.needs_base:
        if base is None:
            raise ToolError(f"the recipe {rule.describe()} needs the base model's weights: pass --base MODEL")
        model = load_sd_model(base, fam, allow_pickle, config_dir)
        tree = ModelTree.from_model(model)
        bind(lora, tree)
        parts = model_parts(model)
        weights = {n: parts[m.part].get_submodule(m.path).weight.detach() for n, m in lora.modules.items()}
    elif lora.style == "diffusers":  # written in the kohya layout: resolve the names
        tree = model_tree(base, fam, allow_pickle, config_dir, tiny=lora.tiny and family in (None, "auto"))
        bind(lora, tree)
    result = ResizeResult(output, rule.describe(), unknown=dict(lora.unknown))
    out: dict[str, torch.Tensor] = {k: sd[k] for k in lora.unknown}
    for name, m in lora.modules.items():
        if m.kind == "lora" or m.kind == "locon_tucker":
            tensors, report = resize_module(m, rule, weights.get(name), dtype)
            new = kohya_module_name(m.part, m.path, tree.family, tree.unet_config) if lora.style == "diffusers" else name
            out.update({f"{new}.{suffix}": v for suffix, v in tensors.items()})
        else:
            out.update({k: sd[k] for k in m.keys})
            report = ModuleReport(name, m.kind, m.rank, note=f"{ADAPTER_LABELS.get(m.kind, m.kind)}: resize re-ranks "
                                  "LoRA / LoCon only")
        result.modules.append(report)
    if not result.resized:
        raise ToolError(f"{src}: no LoRA / LoCon module to resize")
    ranks = {m.new_rank for m in result.resized}
    alphas = {float(out[f"{m.name}.alpha"]) for m in result.resized if f"{m.name}.alpha" in out}
    metadata.pop("lora_adapter_metadata", None)
    meta = lora_metadata(metadata, lora.family, resize=rule.describe())
    meta["ss_network_dim"] = str(ranks.pop()) if len(ranks) == 1 else "Dynamic"
    if alphas:
        meta["ss_network_alpha"] = f"{alphas.pop():g}" if len(alphas) == 1 else "Dynamic"
    save_lora(out, output, meta, overwrite)
    return result
