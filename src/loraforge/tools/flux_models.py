"""FLUX.1 models in `loraforge merge into-model` and `loraforge extract` (`tools.merge` / `tools.extract` hand FLUX
models here).

* merge: `W' = W + Σ sᵢ·ΔWᵢ` on the transformer (and CLIP-L / T5 when the LoRA has text-encoder modules) with the
  math every tool uses (`formats.lora_apply.apply_loras`); a diffusers folder (or the embedded tiny FLUX) is written
  back as a diffusers folder, a transformer single file in the original layout (`flux1-dev.safetensors`, bare or
  under `model.diffusion_model.`) as such a file with the same prefix. A `.safetensors` output of a folder is the
  transformer alone in the original layout.
* extract: every Linear of the transformer (and of CLIP-L / T5 when both models are folders) whose weight differs is
  decomposed by SVD (`tools.svd`, kohya's rank rules); for a kohya / ComfyUI output the fused layers (qkv, linear1)
  are decomposed whole, as sd-scripts' FLUX extraction does on the original checkpoint, so the written rank is the
  rank asked for; for a diffusers output each diffusers module is decomposed on its own.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..adapters import AdapterModule
from ..errors import ShapeMismatchError, ToolError
from ..families import BASE_MODEL_KEY, tiny_base_model
from ..families.flux import transformer_modules
from ..formats.flux_single_file import save_flux_transformer
from ..formats.lora_apply import apply_loras
from ..utils.files import atomic_dir
from .common import LoraSpec, check_output, find_lora_file
from .flux_sources import FluxSource, load_flux_source, read_flux_file
from .flux_tools import Key, output_layout, unit_label, write_flux_lora
from .lora_ops import ExtractResult
from .svd import RankRule, fro_share, full_svd, select_rank, split_factors

log = logging.getLogger("loraforge.tools")


def transformer_module(source: FluxSource):
    """The transformer of a FLUX source as a module: the folder's own, or a single file's weights in a
    `FluxTransformer2DModel` built without allocating (its tensors are the file's)."""
    if source.model is not None:
        return source.model.unet
    from accelerate import init_empty_weights  # lazy: heavy
    from diffusers import FluxTransformer2DModel

    with init_empty_weights():
        model = FluxTransformer2DModel.from_config(source.config)
    model.load_state_dict(source.transformer_sd, strict=True, assign=True)
    return model


# -------------------------------------------------------------------------------------------------------- merge
def apply_flux_lora_files(model, loras: list[LoraSpec], allow_pickle: bool = False, skip_unknown: bool = False) -> int:
    """Patch a loaded FLUX `model` (an `SDModel`) with FLUX LoRA files in place, read against its own transformer
    config (any layout `read_flux_lora` knows); returns the number of weights changed (`sample`, `eval`)."""
    config = {k: v for k, v in dict(model.unet.config).items() if not k.startswith("_")}
    files = [(read_flux_file(find_lora_file(s.path), allow_pickle, config, model.is_tiny), s) for s in loras]
    for f, _ in files:
        f.require_known(skip_unknown)
        log.info("%s: %d modules (%s)", f.source, len(f.lora.modules),
                 ", ".join(sorted({m.part for m in f.lora.modules.values()})))
    parts = {"unet": model.unet, **{f"te{i + 1}": te for i, te in enumerate(model.text_encoders)}}
    return apply_loras(parts, [(f.lora, s.unet, s.te) for f, s in files])


def merge_flux_into_model(base, loras: list[LoraSpec], output, *, config_dir=None, dtype=None,
                          allow_pickle: bool = False, skip_unknown: bool = False, overwrite: bool = False) -> Path:
    """Bake FLUX LoRA files into `base` (a diffusers FLUX folder, a transformer single file, None: the embedded tiny
    FLUX) and write the result (see the module docstring)."""
    output = check_output(output, overwrite)
    if output.suffix not in ("", ".safetensors"):
        raise ToolError(f"{output}: write a FLUX transformer .safetensors file or a folder (no suffix) for diffusers")
    source = load_flux_source(base, config_dir, allow_pickle)
    if source.single_file and not output.suffix:
        raise ToolError(f"{base} is a transformer single file; a diffusers folder also needs the VAE and text "
                        f"encoders: write {output}.safetensors (the merged transformer) instead")
    files = [(read_flux_file(find_lora_file(s.path), allow_pickle, source.config, source.tiny), s) for s in loras]
    for f, _ in files:
        f.require_known(skip_unknown)
    text = [f.source for f, s in files if s.te != 0 and any(m.part != "unet" for m in f.lora.modules.values())]
    if text and output.suffix:
        raise ToolError(f"{', '.join(text)} also patch the text encoders, and a FLUX single file holds the transformer "
                        "only: write a diffusers folder (an output without suffix), or pass --te-scale 0 to merge "
                        "the transformer part only")
    transformer = transformer_module(source)
    changed = apply_loras({"unet": transformer, **source.text_encoders()}, [(f.lora, s.unet, s.te) for f, s in files])
    log.info("merged %d LoRA file(s) into %d weights", len(files), changed)
    meta = {"loraforge_base": str(base or "tiny-flux"),
            "loraforge_merged_loras": json.dumps([s.label for s in loras])}
    if output.suffix:
        if source.tiny:
            meta[BASE_MODEL_KEY] = tiny_base_model("flux")
        sd = transformer.state_dict()
        if dtype is not None:
            sd = {k: v.to(dtype) for k, v in sd.items()}
        return save_flux_transformer(sd, output, source.config, prefix=source.prefix, metadata=meta)
    pipe = source.model.pipeline()
    if dtype is not None:
        pipe.to(dtype)
    with atomic_dir(output) as tmp:
        pipe.save_pretrained(tmp)
    return output


# ------------------------------------------------------------------------------------------------------ extract
def _layers(config: dict, layout: str) -> dict[Key, list[str]]:
    """Unit key -> the diffusers Linear modules whose weights it stacks (a fused layer whole for kohya / ComfyUI)."""
    out: dict[Key, list[str]] = {}
    for fused in transformer_modules(config).values():
        names = [name for name, _, _ in fused.parts]
        if fused.fused and layout != "diffusers":
            out[("unet", fused.original)] = names
        else:
            out.update({("unet", name): [name] for name in names})
    return out


def _text_linears(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    return {p: m for p, m in model.named_modules() if isinstance(m, torch.nn.Linear) and p.startswith("encoder.")}


def _factor(delta: torch.Tensor, weight: torch.Tensor, rule: RankRule, dtype) -> tuple[dict, int, float]:
    u, s, vh = full_svd(delta)
    k = select_rank(s, rule, False, weight, tuple(weight.shape))
    up, down = split_factors(u, s, vh, k)
    return {"lora_up.weight": up.to(dtype), "lora_down.weight": down.to(dtype)}, k, fro_share(s, k)


def extract_flux_lora(base, tuned, output, rule: RankRule, *, to: str | None = None, text_encoders: bool = True,
                      min_diff: float = 0.0, config_dir=None, dtype=None, allow_pickle: bool = False,
                      overwrite: bool = False) -> ExtractResult:
    """A LoRA of (tuned − base) for two FLUX models (folders or transformer single files; `base` None: the embedded
    tiny FLUX), in the kohya layout (or `to`)."""
    if rule.rank is None and rule.method is None and not rule.recipe:
        raise ToolError("give a rank (--rank) or a quality rule (--sv-fro 0.99, ...)")
    layout = output_layout(to)
    check_output(output, overwrite)
    a = load_flux_source(base, config_dir, allow_pickle)
    b = load_flux_source(tuned, config_dir, allow_pickle)
    if transformer_modules(a.config) != transformer_modules(b.config):
        raise ShapeMismatchError(f"--base {a.source} and --tuned {b.source} are different FLUX transformers (blocks or "
                                 "widths differ); pass the base the tuned model was trained from")
    out_dtype = dtype or torch.float32
    result = ExtractResult(Path(output), rule.describe())
    modules: dict[Key, AdapterModule] = {}

    def add(key: Key, w0: torch.Tensor, w1: torch.Tensor) -> None:
        if w0.shape != w1.shape:
            raise ShapeMismatchError(f"{unit_label(key)}: base {tuple(w0.shape)} vs tuned {tuple(w1.shape)}")
        delta = w1.float() - w0.float()
        if float(delta.abs().max()) <= min_diff:
            return
        tensors, k, share = _factor(delta, w0, rule, out_dtype)
        modules[key] = AdapterModule("", tensors, float(k), torch.tensor(float(k), dtype=out_dtype), *key)
        result.modules[key] = (k, share)

    wa, wb = a.transformer_weights(), b.transformer_weights()
    covered = set()
    for key, names in _layers(a.config, layout).items():
        keys = [f"{name}.weight" for name in names]
        covered.update(keys)
        add(key, torch.cat([wa[k] for k in keys]), torch.cat([wb[k] for k in keys]))
    for name, w in wa.items():
        if name not in covered and float((wb[name].float() - w.float()).abs().max()) > min_diff:
            result.skipped[f"transformer.{name}"] = "changed, but not a layer a LoRA carries"
    tes_a, tes_b = a.text_encoders(), b.text_encoders()
    if text_encoders and tes_a and tes_b:
        for part, model in tes_a.items():
            other = dict(tes_b[part].named_modules())
            for path, layer in _text_linears(model).items():
                add((part, path), layer.weight.detach(), other[path].weight.detach())
    elif text_encoders and (tes_a or tes_b):
        result.skipped["text encoders"] = "one of the models is a transformer single file (no text encoders)"
    if not modules:
        raise ToolError(f"{b.source} does not differ from {a.source} in any layer a LoRA can carry")
    result.check, result.output = write_flux_lora(
        modules, layout, a.config, output, None, overwrite, tiny=a.tiny,
        extract=rule.describe(), base=a.source, tuned=b.source)
    return result
