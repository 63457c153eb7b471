"""`loraforge extract`: a LoRA from (tuned − base) by SVD, for the UNet and the text encoders (kohya's
extract_lora_from_models, kohya.md §3.2).

Every Linear / Conv2d of the UNet, and every Linear of the text encoders' transformer layers, whose weight differs by
more than `min_diff` is decomposed: ΔW = U S Vᵀ, the rank rule of `tools.svd` (a fixed rank, and/or a quality rule
such as `sv_fro=0.99`) picks k, and `up = U_k√S_k`, `down = √S_k V_kᵀ`, `alpha = k` (scale 1). k×k convolutions
become LoCon modules (`conv_rank`, 0 to leave them out). Written in the kohya layout (`formats.lora_write`), so
ComfyUI, A1111 and `loraforge merge/sample` read it. Changed weights no LoRA can carry (norms, embeddings) are
reported. FLUX.1 models: `tools.flux_models`.
"""

from __future__ import annotations

import torch

from ..adapters import AdapterModule
from ..formats.kohya import kohya_state_dict
from ..formats.lora_file import ModelTree
from .common import check_output, load_sd_model, lora_metadata, model_parts, refuse_layout, save_lora
from .flux_models import extract_flux_lora
from .flux_sources import is_flux_model
from ..errors import FamilyMismatchError, ShapeMismatchError, ToolError
from .lora_ops import ExtractResult
from .svd import RankRule, fro_share, full_svd, select_rank, shape_factors, split_factors



def _candidates(part: str, model: torch.nn.Module):
    """(path, module) of the layers a LoRA can carry: UNet Linear/Conv2d, text-encoder transformer-layer Linear."""
    for path, module in model.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        if part != "unet" and ".layers." not in f".{path}":
            continue
        yield path, module


def extract_lora(base: str | None, tuned: str, output, rule: RankRule, *, text_encoders: bool = True,
                 min_diff: float = 0.0, family: str = "auto", dtype=None, allow_pickle: bool = False,
                 overwrite: bool = False, config_dir: str | None = None, to: str | None = None) -> ExtractResult:
    """Extract (tuned − base) into a LoRA file; `base`/`tuned` are any model names `load_model` takes (None: the
    embedded tiny model) or loaded `SDModel`s. FLUX.1 models (diffusers folders or transformer single files) go to
    `tools.flux_models` (kohya layout, or `to`)."""
    flux = [is_flux_model(base, family) if base is not None else None, is_flux_model(tuned, family)]
    if any(flux):
        if False in flux:
            which = [f"{name} {source} is{'' if f else ' not'} FLUX.1" for name, source, f in
                     (("--base", base, flux[0]), ("--tuned", tuned, flux[1])) if f is not None]
            raise FamilyMismatchError("; ".join(which) + ": a LoRA is extracted between two models of the same family")
        return extract_flux_lora(base, tuned, output, rule, to=to, text_encoders=text_encoders, min_diff=min_diff,
                                 config_dir=config_dir, dtype=dtype, allow_pickle=allow_pickle, overwrite=overwrite)
    refuse_layout(to)
    if rule.rank is None and rule.method is None and not rule.recipe:
        raise ToolError("give a rank (--rank) or a quality rule (--sv-fro 0.99, ...)")
    output = check_output(output, overwrite)
    a = load_sd_model(base, family, allow_pickle, config_dir)
    b = load_sd_model(tuned, family, allow_pickle, config_dir)
    if a.family.name != b.family.name:
        raise FamilyMismatchError(
            f"--base {base or 'the embedded tiny model'} is {a.family.label}, --tuned {tuned} is {b.family.label}; a "
            "LoRA is extracted between two models of the same family: pass the base the tuned model was trained from")
    tree = ModelTree.from_model(a)
    parts_a, parts_b = model_parts(a), model_parts(b)
    result = ExtractResult(output, rule.describe())
    modules: list[AdapterModule] = []
    out_dtype = dtype or torch.float32
    for part, model in parts_a.items():
        if part != "unet" and not text_encoders:
            continue
        other = dict(parts_b[part].named_modules())
        layers = dict(_candidates(part, model))
        for path, layer in layers.items():
            w0 = layer.weight.detach().float()
            w1 = other[path].weight.detach().float()
            if w0.shape != w1.shape:
                raise ShapeMismatchError(f"{part} {path}: base {tuple(w0.shape)} vs tuned {tuple(w1.shape)}")
            delta = w1 - w0
            if float(delta.abs().max()) <= min_diff:
                continue
            conv = delta.dim() == 4 and delta.shape[2:] != (1, 1)
            if conv and rule.conv_rank == 0:
                result.skipped[f"{part}.{path}"] = "k×k conv (conv rank 0)"
                continue
            u, s, vh = full_svd(delta.flatten(1))
            k = select_rank(s, rule, conv, w0, tuple(w0.shape))
            up, down = shape_factors(*split_factors(u, s, vh, k), tuple(w0.shape))
            tensors = {"lora_up.weight": up.to(out_dtype), "lora_down.weight": down.to(out_dtype)}
            modules.append(AdapterModule("", tensors, float(k), torch.tensor(float(k), dtype=out_dtype), part, path))
            result.modules[(part, path)] = (k, fro_share(s, k))
        _report_other_changes(part, model, parts_b[part], set(layers), min_diff, result)
    if not modules:
        raise ToolError(f"{b.source} does not differ from {a.source} in any layer a LoRA can carry")
    ranks = {k for k, _ in result.modules.values()}
    meta = lora_metadata(None, a.family.name, extract=rule.describe(), base=a.source, tuned=b.source)
    meta.update(ss_network_module="networks.lora", ss_network_dim=str(ranks.pop()) if len(ranks) == 1 else "Dynamic")
    meta["ss_network_alpha"] = meta["ss_network_dim"]
    save_lora(kohya_state_dict(modules, tree.family, tree.unet_config, naming="auto"), output, meta, overwrite)
    return result


def _report_other_changes(part, model_a, model_b, covered: set[str], min_diff, result) -> None:
    params_b = dict(model_b.named_parameters())
    for name, p in model_a.named_parameters():
        module = name.rsplit(".", 1)[0]
        if module in covered and name.endswith(".weight"):
            continue
        if float((params_b[name].detach().float() - p.detach().float()).abs().max()) > min_diff:
            result.skipped[f"{part}.{name}"] = "changed, but not a layer a LoRA carries"
