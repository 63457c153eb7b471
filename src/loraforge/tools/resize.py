"""`loraforge resize`: re-rank a LoRA / LoCon file by SVD (kohya's resize_lora rules and resize_lora's recipes).

Per module ΔW = (alpha/r)·up@down is decomposed without forming it (QR of both factors, SVD of the r×r core;
Tucker LoCon modules are rebuilt in full first and come out as plain LoCon), the rank rule of `tools.svd` picks how
many directions stay, and the factors are written so that the consumers' scale is unchanged:
`up = U·√(S/αf)`, `down = √(S/αf)·Vᵀ`, `alpha = αf·new_rank` with αf = alpha/r ("alpha semantics kept"; a module
without alpha stays without). `dora_scale` is copied (exact at full rank only). LoHa / LoKr / full modules and keys
the reader does not know are copied unchanged and listed. A diffusers-layout input comes out in the kohya layout
(names resolved against `base` or the family's full-size model). FLUX.1 files: `tools.flux_tools`.
"""

from __future__ import annotations

import torch

from ..adapters import ADAPTER_LABELS
from ..families.flux import FLUX
from ..formats.file_kind import require_kind
from ..formats.flux_check import is_flux_lora
from ..formats.kohya import kohya_module_name
from ..formats.lora_file import ModelTree, bind, read_lora_state_dict, read_tensors
from .common import check_output, load_sd_model, lora_metadata, model_parts, model_tree, refuse_layout, save_lora
from ..errors import ToolError
from .flux_tools import resize_flux_lora
from .lora_ops import ModuleReport, ResizeResult, resize_module
from .svd import RankRule



def resize_lora(src, output, rule: RankRule, *, base: str | None = None, family: str = "auto", dtype=None,
                allow_pickle: bool = False, overwrite: bool = False, config_dir: str | None = None,
                to: str | None = None) -> ResizeResult:
    """Re-rank every LoRA / LoCon module of `src` and write `output`. `base` (any model name `load_model` takes)
    is needed for recipes that reference the checkpoint (`fro_ckpt`, `spn_ckpt`). A FLUX.1 file goes to
    `tools.flux_tools` (written in its own layout, or `to`)."""
    output = check_output(output, overwrite)
    require_kind(src, ("lora",), "resize", ToolError)
    sd, metadata = read_tensors(src, allow_pickle)
    if family == FLUX or (family in (None, "auto") and is_flux_lora(sd, metadata)):
        return resize_flux_lora(src, output, rule, to=to, base=base, config_dir=config_dir, dtype=dtype,
                                allow_pickle=allow_pickle, overwrite=overwrite, tensors=(sd, metadata))
    refuse_layout(to)
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
