"""`loraforge resize` and `loraforge merge loras` of FLUX.1 LoRA files (`tools.resize` / `tools.merge_loras` hand FLUX
files here), and what every FLUX tool writes with: one module per layer of the output layout ("units"), the writer
of the kohya, ComfyUI-native and diffusers layouts, and the consumer check each written file must pass.

Fused layers. A kohya / ComfyUI file holds one LoRA for each original layer, and `double_blocks.N.img_attn.qkv`
(to_q | to_k | to_v) and `single_blocks.N.linear1` (to_q | to_k | to_v | proj_mlp) are one layer there; the reader
splits them into the diffusers parts (sharing the down). Resize and merge work on the modules the OUTPUT layout
holds: for a kohya / ComfyUI output the parts are joined back into one module per original layer (the file's own
rank-r module when they came from one, else fused exactly by `formats.flux_lora.fuse`), and that module is
re-ranked / merged as a whole. So the fused layer's ΔW is its best rank-k approximation (its error is the SVD
truncation error of the whole layer) and the file's rank is the rank asked for; re-ranking the parts and fusing them
would be exact too but write 3k (qkv) or 4k (linear1). For a diffusers output each diffusers module is a unit (a
joined kohya module is split by rows, exactly).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..adapters import ADAPTER_LABELS, AdapterModule, delta_shape, module_delta
from ..errors import FamilyMismatchError, ShapeMismatchError, ToolError, UnsupportedError
from ..families import BASE_MODEL_KEY, tiny_base_model
from ..families.flux import FLUX, FusedModule, diffusers_module_origin, transformer_modules
from ..formats.check import check_state_dict
from ..formats.diffusers_lora import WEIGHT_NAME
from ..formats.flux_lora import (
    FluxLora,
    flux_comfyui_state_dict,
    flux_diffusers_state_dict,
    flux_kohya_state_dict,
    flux_metadata,
    fuse,
    kohya_unet_name,
)
from ..formats.lora_keys import DOWN, UP
from .common import check_output, lora_metadata, save_lora
from .flux_files import FLUX_TARGETS
from .flux_sources import FluxFile, full_config, inner_width, load_flux_source, read_flux_file, source_config
from .flux_sources import tiny_config, tiny_text_configs
from .lora_ops import LoraMergeResult, ModuleReport, ResizeResult, merge_module, resize_module
from .svd import RankRule

_TEXT_MODULES = ("lora_te", "text_encoder")  # text-encoder module names in the written layouts
Key = tuple[str, str]  # (part, diffusers path), or ("unet", original name) for a fused layer joined into one unit


# ------------------------------------------------------------------------------------------------------- units
def output_layout(to: str | None, layout_in: str = "kohya") -> str:
    """The layout written: `to`, else the input's (XLabs files are written in the kohya layout)."""
    target = to or ("kohya" if layout_in in ("xlabs", "") else layout_in)
    if target not in FLUX_TARGETS:
        raise ToolError(f"--to {target!r}: FLUX LoRA files are written as {', '.join(FLUX_TARGETS)}")
    return target


def fused_layer(key: Key, config: dict) -> FusedModule | None:
    """The fused original layer a unit key names (None for a diffusers module or a text-encoder module)."""
    fused = transformer_modules(config).get(key[1]) if key[0] == "unet" else None
    return fused if fused is not None and fused.fused else None


def units(lora: FluxLora, config: dict, layout: str) -> dict[Key, AdapterModule]:
    """The modules of `lora` as a file of `layout` holds them: diffusers modules, or (kohya / ComfyUI) the parts of
    each fused layer joined into one module."""
    if layout == "diffusers":
        return lora.by_target()
    out: dict[Key, AdapterModule] = {}
    groups: dict[str, dict[str, AdapterModule]] = {}
    for m in lora.modules.values():
        origin = diffusers_module_origin(m.path, config) if m.part == "unet" else None
        if origin is not None and origin[0].fused:
            groups.setdefault(origin[0].original, {})[m.path] = m
        else:
            out[m.target] = m
    table = transformer_modules(config)
    for original, parts in groups.items():
        out[("unet", original)] = join_parts(table[original], parts)
    return out


def join_parts(fused: FusedModule, parts: dict[str, AdapterModule]) -> AdapterModule:
    """One module for a fused layer from modules on its diffusers parts, ΔW exact: parts split off one file module
    (one shared down, one scale) become that rank-r module again; other LoRA parts are fused (`fuse`, ranks add
    up); other kinds give the layer's ΔW rows (a `diff` module)."""
    mods = list(parts.values())
    name = kohya_unet_name(fused.original)
    if all(m.kind == "lora" and set(m.tensors) <= {DOWN, UP} for m in mods):
        first = mods[0]
        shared = all(m.tensors[DOWN] is first.tensors[DOWN] and m.scale == first.scale for m in mods)
        if not shared:
            return fuse(fused, parts)
        up = torch.zeros(fused.rows, first.rank, dtype=first.tensors[UP].dtype)
        for path, start, size in fused.parts:
            if path in parts:
                up[start:start + size] = parts[path].tensors[UP].reshape(size, -1)
        return AdapterModule(name, {DOWN: first.tensors[DOWN], UP: up}, first.alpha, first.alpha_tensor,
                             part="unet", path=fused.original)
    width = next(delta_shape(m.tensors)[1] for m in mods)
    diff = torch.zeros(fused.rows, width)
    for path, start, size in fused.parts:
        if path in parts:
            diff[start:start + size] = module_delta(parts[path], (size, width))
    return AdapterModule(name, {"diff": diff}, part="unet", path=fused.original)


def split_unit(m: AdapterModule, fused: FusedModule) -> list[AdapterModule]:
    """The diffusers parts of a joined fused-layer module (rows of its up, or of its ΔW); all-zero parts are left
    out, as the reader does."""
    key = UP if UP in m.tensors else "diff"
    rows = m.tensors[key]
    out = []
    for path, start, size in fused.parts:
        part = rows[start:start + size]
        if not part.any():
            continue
        tensors = {key: part.contiguous()}
        if key == UP:
            tensors[DOWN] = m.tensors[DOWN]
        out.append(AdapterModule(f"{m.name}:{path}", tensors, m.alpha, m.alpha_tensor, part="unet", path=path))
    return out


def unit_weight(weights: dict[str, torch.Tensor], text_encoders: dict, key: Key, config: dict) -> torch.Tensor:
    """The base weight a unit patches (a fused layer's: its parts' weights stacked by rows)."""
    part, path = key
    if part != "unet":
        if part not in text_encoders:
            raise UnsupportedError(f"{path}: a {part} module needs the base model's text encoders (a diffusers folder)")
        return text_encoders[part].get_submodule(path).weight.detach()
    fused = fused_layer(key, config)
    names = [name for name, _, _ in fused.parts] if fused else [path]
    return torch.cat([weights[f"{name}.weight"] for name in names])


def unit_label(key: Key) -> str:
    return key[1] if key[0] == "unet" else f"{key[0]}:{key[1]}"


# ------------------------------------------------------------------------------------------------------ writing
def flux_lora_state_dict(modules: dict[Key, AdapterModule], layout: str, config: dict) -> tuple[dict, dict]:
    """(state dict, header keys the layout needs) of units in `layout`."""
    plain: list[AdapterModule] = []
    whole: list[tuple[FusedModule, AdapterModule]] = []
    for key, m in modules.items():
        fused = fused_layer(key, config)
        if fused is None:
            plain.append(m)
        elif layout == "diffusers":
            plain += split_unit(m, fused)
        else:
            whole.append((fused, m))
    if layout == "diffusers":
        return flux_diffusers_state_dict(plain)
    writer = flux_kohya_state_dict if layout == "kohya" else flux_comfyui_state_dict
    sd = writer(plain, config)
    for fused, m in whole:  # a joined module is already in the original layer's row order
        if m.kind != "lora" or set(m.tensors) - {DOWN, UP}:
            raise UnsupportedError(f"{fused.original}: a {ADAPTER_LABELS.get(m.kind, m.kind)} update of a fused "
                                   "layer has no exact kohya form; write the diffusers layout (--to diffusers)")
        name = kohya_unet_name(fused.original) if layout == "kohya" else f"diffusion_model.{fused.original}"
        down = m.tensors[DOWN]
        sd[f"{name}.{DOWN}"], sd[f"{name}.{UP}"] = down.contiguous(), m.tensors[UP].contiguous()
        if m.alpha is not None:
            sd[f"{name}.alpha"] = torch.tensor(float(m.alpha), dtype=down.dtype)
    return sd, {}


def check_flux_output(sd: dict, metadata: dict, layout: str, config: dict, output) -> str:
    """The consumer check (`formats.flux_check`) of a FLUX file about to be written, against its transformer: its
    consumer (ComfyUI for kohya / ComfyUI files, diffusers for diffusers files) must apply every module. Returns the
    summary line; raises `ToolError` (nothing written) otherwise.

    A file of the embedded tiny FLUX is checked against its own CLIP-L and T5; for another smaller transformer the
    consumer models hold the full-size text encoders, so its narrower text-encoder modules are reported as misfits
    there and are not counted against the file."""
    small = inner_width(config) != inner_width(full_config())
    tiny = small and inner_width(config) == inner_width(tiny_config())
    report = check_state_dict(sd, FLUX, metadata, unet_config=config,
                              text_encoder_configs=list(tiny_text_configs()) if tiny else None)
    consumer = report.consumers["diffusers" if layout == "diffusers" else "comfyui"]
    misfits = {n for n in consumer.skipped if small and n.startswith(_TEXT_MODULES)}
    missing = consumer.total - consumer.applied - len(misfits)
    if report.broken or not consumer.loads or missing:
        problems = consumer.lines(limit=5) + [str(i) for i in report.errors]
        raise ToolError(f"{output}: not written, the consumer check of the {layout} file fails: " + "; ".join(problems))
    note = (f"; {len(misfits)} text-encoder modules of the small model not checked (the consumer models hold the "
            "full-size CLIP-L / T5)") if misfits else ""
    return report.summary() + note


def write_flux_lora(modules: dict[Key, AdapterModule], layout: str, config: dict, output, source_meta: dict | None,
                    overwrite: bool, *, tiny: bool = False, dtype=None, **what) -> tuple[str, Path]:
    """Write units as a FLUX LoRA in `layout` (a diffusers output without suffix is a folder holding
    `pytorch_lora_weights.safetensors`) after the consumer check. The header keeps the source's `ss_*` keys (minus
    stale hashes), sets sd-scripts' FLUX keys and the written rank / alpha, and says what the tool did (`what`).
    Returns (the check's summary, the file written)."""
    output = Path(output)
    if layout == "diffusers" and output.suffix == "":
        output = output / WEIGHT_NAME
    output = check_output(output, overwrite)
    sd, header = flux_lora_state_dict(modules, layout, config)
    if dtype is not None:
        sd = {k: v.to(dtype).contiguous() for k, v in sd.items()}
    source = {k: v for k, v in (source_meta or {}).items() if k != "lora_adapter_metadata"}
    meta = lora_metadata({**flux_metadata(bool(config.get("guidance_embeds", True))), **source}, FLUX, **what)
    meta.pop(BASE_MODEL_KEY, None)
    if tiny:
        meta[BASE_MODEL_KEY] = tiny_base_model(FLUX)
    ranks = {int(v.shape[0]) for k, v in sd.items() if k.endswith((DOWN, ".lora_A.weight"))}
    alphas = {float(v) for k, v in sd.items() if k.endswith(".alpha")}
    if ranks:
        meta["ss_network_dim"] = str(ranks.pop()) if len(ranks) == 1 else "Dynamic"
        meta["ss_network_alpha"] = (f"{alphas.pop():g}" if len(alphas) == 1 else "Dynamic") if alphas else \
            meta["ss_network_dim"]
    meta.update(header)
    summary = check_flux_output(sd, meta, layout, config, output)
    save_lora(sd, output, meta, overwrite)
    return summary, output


# ------------------------------------------------------------------------------------------------------- resize
def resize_flux_lora(src, output, rule: RankRule, *, to: str | None = None, base: str | None = None,
                     config_dir: str | None = None, dtype=None, allow_pickle: bool = False, overwrite: bool = False,
                     tensors: tuple[dict, dict] | None = None) -> ResizeResult:
    """Re-rank every LoRA module of a FLUX file (`tools.resize.resize_module`: kohya's rules, alpha semantics kept)
    and write it in its own layout (or `to`). `base` (a FLUX folder or single file) also fixes the transformer the
    file is read against, and is needed by the `fro_ckpt` / `spn_ckpt` recipes."""
    check_output(output, overwrite)
    if rule.needs_base and base is None:
        raise ToolError(f"the recipe {rule.describe()} needs the base model's weights: pass --base MODEL")
    config, tiny = source_config(base, config_dir) if base is not None else (None, False)
    f = read_flux_file(src, allow_pickle, config, tiny, tensors)
    source = load_flux_source(base, config_dir, allow_pickle) if rule.needs_base else None
    f.require_known(hint="a resized file must hold every key")
    layout = output_layout(to, f.lora.layout)
    mods = units(f.lora, f.config, layout)
    weights = source.transformer_weights() if rule.needs_base else {}
    result = ResizeResult(Path(output), rule.describe())
    new: dict[Key, AdapterModule] = {}
    for key, m in mods.items():
        if m.kind == "lora":
            weight = unit_weight(weights, source.text_encoders(), key, f.config) if rule.needs_base else None
            out, report = resize_module(m, rule, weight, dtype)
            alpha = out.pop("alpha", None)
            new[key] = AdapterModule(m.name, out, None if alpha is None else float(alpha), alpha, m.part, m.path)
            report.name = unit_label(key)
        else:
            new[key] = m
            report = ModuleReport(unit_label(key), m.kind, m.rank,
                                  note=f"{ADAPTER_LABELS.get(m.kind, m.kind)}: resize re-ranks LoRA only")
        result.modules.append(report)
    if not result.resized:
        raise ToolError(f"{src}: no LoRA module to resize")
    result.check, result.output = write_flux_lora(new, layout, f.config, output, f.metadata, overwrite, tiny=f.tiny,
                                                  resize=rule.describe())
    return result


# -------------------------------------------------------------------------------------------------- merge loras
def refuse_mixed(paths: list, evidence: list) -> None:
    """FLUX and SD LoRA files do not merge: raise `FamilyMismatchError` naming which is which."""
    if any(evidence) and not all(evidence):
        raise FamilyMismatchError(
            "cannot merge FLUX.1 and Stable Diffusion LoRA files (their layers differ): " + ", ".join(
                f"{p} ({'FLUX.1' if e else 'not FLUX.1'})" for p, e in zip(paths, evidence))
            + "; merge files of one family")


def _same_transformer(files: list[FluxFile]) -> None:
    first = files[0]
    for f in files[1:]:
        if transformer_modules(f.config) != transformer_modules(first.config):
            raise ShapeMismatchError(f"{f.source} is a LoRA for another FLUX transformer than {first.source} "
                                     f"({'tiny' if f.tiny else 'full-size'} vs {'tiny' if first.tiny else 'full-size'})")


def merge_flux_loras(inputs: list[tuple[str, float]], output, *, mode: str = "concat", rule: RankRule | None = None,
                     alpha: float = 0.5, to: str | None = None, base: str | None = None, config_dir: str | None = None,
                     dtype=None, allow_pickle: bool = False, skip_unknown: bool = False,
                     overwrite: bool = False) -> LoraMergeResult:
    """`tools.merge_loras.merge_loras` for FLUX files: concat (exact), svd, interpolate, per unit of the output
    layout (`to`, default: the first file's layout)."""
    check_output(output, overwrite)
    config, tiny = source_config(base, config_dir) if base is not None else (None, False)
    files = [read_flux_file(p, allow_pickle, config, tiny) for p, _ in inputs]
    _same_transformer(files)
    for f in files:
        f.require_known(skip_unknown)
    config = files[0].config
    layout = output_layout(to, files[0].lora.layout)
    weights = [w for _, w in inputs] if mode != "interpolate" else [alpha, 1.0 - alpha]
    targets: dict[Key, list[tuple[AdapterModule, float]]] = {}
    for f, w in zip(files, weights):
        for key, m in units(f.lora, config, layout).items():
            targets.setdefault(key, []).append((m, w))
    result = LoraMergeResult(Path(output), mode)
    merged: dict[Key, AdapterModule] = {}
    for key, items in targets.items():
        module, share = merge_module(items, mode, delta_shape(items[0][0].tensors), rule, key, dtype)
        merged[key] = module
        result.modules[key] = ([m.rank or 0 for m, _ in items], module.rank, share)
    record = {"mode": mode, "inputs": [[p, w] for p, w in inputs], **({"alpha": alpha} if mode == "interpolate" else {})}
    result.check, result.output = write_flux_lora(merged, layout, config, output, None, overwrite,
                                                  tiny=all(f.tiny for f in files), merge=json.dumps(record))
    return result
