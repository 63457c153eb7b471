"""FLUX.1 LoRA files: the kohya layout sd-scripts writes (and ComfyUI / Forge load) from modules trained on diffusers
names, and every FLUX layout read back into modules bound to diffusers / transformers module paths.

Layouts (names learnt from sd-scripts `networks/lora_flux.py`, diffusers `loaders/lora_conversion_utils.py` and
ComfyUI `comfy/lora.py`, `comfy/lora_convert.py`; no code taken):

* kohya (sd-scripts, ComfyUI, Forge): `lora_unet_<original name with "_">` with the original (BFL) transformer names
  and FUSED layers (`lora_unet_double_blocks_0_img_attn_qkv` = to_q | to_k | to_v, `lora_unet_single_blocks_0_linear1`
  = to_q | to_k | to_v | proj_mlp); CLIP-L `lora_te1_text_model_encoder_layers_0_self_attn_q_proj`; T5-XXL
  `lora_te3_encoder_block_0_layer_0_SelfAttention_q` (OneTrainer: `lora_te2_`); suffixes `lora_down/up`, `alpha`.
* ComfyUI-native: `diffusion_model.<original name>.lora_down.weight` (or `lora_A/lora_B`), same fusion.
* diffusers / PEFT / ai-toolkit: `transformer.<diffusers path>.lora_A.weight`, `text_encoder.<path>`,
  `text_encoder_2.<path>`; OneTrainer `lora_transformer_<diffusers path with "_">`, SimpleTuner `lycoris_<...>`.
* XLabs: `double_blocks.N.processor.qkv_lora1.down.weight` (image qkv), `qkv_lora2` (text qkv), `proj_lora1/2`,
  `single_blocks.N.processor.qkv_lora` (to_q | to_k | to_v only) / `proj_lora` (linear2); no alpha (scale 1).

Writing a fused module from split LoRAs is exact: down = the parts' downs stacked along the rank, up = their ups
block-diagonal, one alpha = the common scale x total rank (when scales differ, each up is multiplied by its own scale
and alpha = rank). The final layer's modulation swaps the two halves of its output rows. LoHa / LoKr / DoRA / Tucker
parts of a fused layer have no exact fused form: `flux_kohya_state_dict` refuses them (write the diffusers layout).
Reading splits a fused LoRA's up by rows (the down is shared); other kinds of a fused module are read as their ΔW
rows (`diff` modules), which the tools apply exactly.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import torch

from ..adapters import AdapterModule
from ..adapters.math import raw_delta
from ..errors import UnsupportedError
from ..families.flux import FLUX_FILE_FACTS, FusedModule, diffusers_module_origin, flux_components, transformer_modules
from .diffusers_lora import peft_layers
from .lora_file import _peft_alphas
from .lora_keys import DOWN, UP, group_keys

Config = dict | None
_TEXT_MODEL_PARTS = ("encoder.", "embeddings.", "final_layer_norm")  # what CLIP keeps under `text_model`
_XLABS = {  # XLabs processor name -> original module suffix inside the block
    "qkv_lora1": "img_attn.qkv", "qkv_lora2": "txt_attn.qkv", "proj_lora1": "img_attn.proj",
    "proj_lora2": "txt_attn.proj", "qkv_lora": "linear1", "proj_lora": "linear2",
}  # fmt: skip


# -------------------------------------------------------------------------------------------------- module trees
@functools.lru_cache(maxsize=4)
def _text_encoder_linears(component: str) -> dict[str, tuple[int, ...]]:
    """Linear module path -> weight shape of a full-size FLUX text encoder, built on the meta device."""
    from accelerate import init_empty_weights  # lazy: heavy
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    config = dict(flux_components()[component])
    with init_empty_weights():
        if config.get("model_type") == "t5":
            model = T5EncoderModel(T5Config.from_dict(config))
        else:
            model = CLIPTextModel(CLIPTextConfig.from_dict(config))
    return {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def text_encoder_linears(part: str) -> dict[str, tuple[int, ...]]:
    """The full-size CLIP-L ("te1") or T5-XXL ("te2") Linear modules of FLUX.1 (cached)."""
    return _text_encoder_linears(FLUX_FILE_FACTS["text_encoders"][part][0])


def transformer_linears(config: Config = None) -> list[str]:
    """Every Linear module of the diffusers FLUX transformer, from the name table."""
    return [name for fused in transformer_modules(config).values() for name, _, _ in fused.parts]


# -------------------------------------------------------------------------------------------------- kohya names
def kohya_text_name(part: str, path: str) -> str:
    """kohya name of a FLUX text-encoder module: CLIP-L `lora_te1_text_model_...`, T5 `lora_te3_encoder_...`."""
    prefix = FLUX_FILE_FACTS["text_encoders"][part][1][0]
    core = path.removeprefix("text_model.")
    middle = "text_model_" if part == "te1" and core.startswith(_TEXT_MODEL_PARTS) else ""
    return f"{prefix}_{middle}{core.replace('.', '_')}"


def kohya_unet_name(original: str) -> str:
    return "lora_unet_" + original.replace(".", "_")


# ------------------------------------------------------------------------------------------------------ writing
def _lora_only(m: AdapterModule, fused: FusedModule, why: str) -> None:
    extra = set(m.tensors) - {DOWN, UP}
    if m.kind != "lora" or extra:
        what = "DoRA" if "dora_scale" in m.tensors else ("Tucker" if "lora_mid.weight" in m.tensors else m.kind)
        raise UnsupportedError(
            f"{m.path} is a {what} module; kohya FLUX files hold `{fused.original}` as one layer ({why}), and a "
            f"{what} update cannot be written there exactly. Save the diffusers layout "
            "(`[output] format = \"diffusers\"` / `loraforge convert --to diffusers`), or train LoRA / LoCon"
        )


def _plain(m: AdapterModule) -> bool:
    return m.kind == "lora" and not set(m.tensors) - {DOWN, UP}


def fuse(fused: FusedModule, parts: dict[str, AdapterModule]) -> AdapterModule:
    """One kohya module for `fused.original` from LoRA modules on its diffusers parts (path -> module; parts the
    network did not adapt get zero rows). Exact: ΔW of each part's rows equals the part's own ΔW."""
    for m in parts.values():
        _lora_only(m, fused, "to_q | to_k | to_v fused" if fused.fused else "its output halves swapped")
    present = [(name, start, size, parts[name]) for name, start, size in fused.parts if name in parts]
    scales = {m.scale for *_, m in present}
    common = scales.pop() if len(scales) == 1 else None
    total = sum(m.rank for *_, m in present)
    first = present[0][3].tensors[DOWN]
    dtype = first.dtype
    down = torch.cat([m.tensors[DOWN].to(dtype) for *_, m in present])
    up = torch.zeros(fused.rows, total, dtype=dtype)
    col = 0
    for _, start, size, m in present:
        u = m.tensors[UP].reshape(size, -1)
        up[start:start + size, col:col + m.rank] = u if common is not None else (u.float() * m.scale).to(dtype)
        col += m.rank
    if fused.swap_halves:
        up = up.roll(fused.rows // 2, dims=0)
    alpha = (common if common is not None else 1.0) * total
    return AdapterModule(kohya_unet_name(fused.original), {DOWN: down.contiguous(), UP: up.contiguous()}, alpha,
                         part="unet", path=fused.original)


def flux_kohya_state_dict(modules, config: Config = None, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The kohya FLUX state dict (sd-scripts' layout) of bound modules: transformer modules (part "unet") on diffusers
    paths, fused into the original layers; CLIP-L ("te1") and T5 ("te2") modules on transformers paths. `config`: the
    transformer's diffusers config (None: full size). `dtype` None keeps the tensors as stored."""
    by_original: dict[str, dict[str, AdapterModule]] = {}
    out_modules: list[AdapterModule] = []
    for m in modules:
        if m.part == "unet":
            origin = diffusers_module_origin(m.path, config)
            if origin is None:
                raise UnsupportedError(f"transformer module {m.path!r} has no place in a kohya FLUX file (not a "
                                       "Linear layer of FluxTransformer2DModel)")
            fused = origin[0]
            if not fused.fused and not fused.swap_halves:
                out_modules.append(AdapterModule(kohya_unet_name(fused.original), m.tensors, m.alpha, m.alpha_tensor))
            else:
                by_original.setdefault(fused.original, {})[m.path] = m
        else:
            out_modules.append(AdapterModule(kohya_text_name(m.part, m.path), m.tensors, m.alpha, m.alpha_tensor))
    table = transformer_modules(config)
    for original, parts in by_original.items():
        if all(_plain(m) for m in parts.values()):
            out_modules.append(fuse(table[original], parts))
        else:  # LoHa / LoKr / DoRA / Tucker parts have no fused form: LyCORIS' diffusers-named modules, which
            # ComfyUI (and Forge) apply to their rows of the fused weight (SimpleTuner writes these)
            out_modules += [AdapterModule(f"lycoris_{path.replace('.', '_')}", m.tensors, m.alpha, m.alpha_tensor)
                            for path, m in parts.items()]
    sd: dict[str, torch.Tensor] = {}
    for m in out_modules:
        for suffix, tensor in m.tensors.items():
            sd[f"{m.name}.{suffix}"] = tensor if dtype is None else tensor.to(dtype).contiguous()
        if m.alpha is not None:
            if m.alpha_tensor is not None and dtype is None:
                sd[f"{m.name}.alpha"] = m.alpha_tensor
            else:
                sd[f"{m.name}.alpha"] = torch.tensor(float(m.alpha), dtype=dtype or next(iter(m.tensors.values())).dtype)
    return sd


def flux_comfyui_state_dict(modules, config: Config = None, dtype: torch.dtype | None = None) -> dict:
    """ComfyUI's native layout: the kohya file with `diffusion_model.<original name>` transformer keys (text
    encoders keep their kohya names, which ComfyUI reads)."""
    names = {kohya_unet_name(o): o for o in transformer_modules(config)}
    out = {}
    for key, value in flux_kohya_state_dict(modules, config, dtype).items():
        module, _, suffix = key.partition(".")
        out[f"diffusion_model.{names[module]}.{suffix}" if module in names else key] = value
    return out


def flux_diffusers_state_dict(modules) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, header) in the layout `FluxPipeline.load_lora_weights` reads: PEFT keys under `transformer.`,
    `text_encoder.`, `text_encoder_2.`, each part's LoraConfig in `lora_adapter_metadata`. Plain LoRA only."""
    import json

    modules = list(modules)
    bad = [f"{m.part}:{m.path} ({m.kind})" for m in modules if m.kind != "lora" or set(m.tensors) - {DOWN, UP}]
    if bad:
        raise UnsupportedError(f"diffusers loads plain LoRA only; {len(bad)} modules are not: {', '.join(bad[:5])}. "
                               "Keep the kohya file for ComfyUI / Forge")
    prefixes = {"unet": FLUX_FILE_FACTS["denoiser_prefix"],
                **{part: te[0] for part, te in FLUX_FILE_FACTS["text_encoders"].items()}}
    sd: dict[str, torch.Tensor] = {}
    config: dict = {}
    for part, prefix in prefixes.items():
        chosen = {(m.part, m.path): m for m in modules if m.part == part}
        if not chosen:
            continue
        layers, cfg = peft_layers(chosen, part, None)
        sd.update({f"{prefix}.{k}": v for k, v in layers.items()})
        config.update({f"{prefix}.{k}": sorted(v) if isinstance(v, set) else v for k, v in cfg.items()})
    seen: set[int] = set()
    for key, value in sd.items():  # parts split off one fused layer share its down: safetensors stores no aliases
        if value.data_ptr() in seen:
            sd[key] = value.clone()
        seen.add(sd[key].data_ptr())
    return sd, {"format": "pt", "lora_adapter_metadata": json.dumps(config, indent=2, sort_keys=True)}


def flux_metadata(dev: bool = True, training: dict | None = None) -> dict[str, str]:
    """The header keys sd-scripts writes for a FLUX LoRA (`ss_base_model_version = flux1`, `networks.lora_flux`,
    SAI modelspec `flux-1-dev/lora` or `flux-1-schnell/lora`), plus FLUX training keys given in `training`
    (`ss_guidance_scale`, `ss_timestep_sampling`, `ss_discrete_flow_shift`, ... as the trainer knows them)."""
    meta = {
        "ss_base_model_version": FLUX_FILE_FACTS["base_model_version"],
        "ss_network_module": "networks.lora_flux",
        "ss_v2": "False",
        "modelspec.architecture": f"{FLUX_FILE_FACTS['modelspec_architecture'][dev]}/lora",
        "modelspec.implementation": FLUX_FILE_FACTS["modelspec_implementation"],
    }
    meta.update({k: str(v) for k, v in (training or {}).items()})
    return meta


# ------------------------------------------------------------------------------------------------------ reading
@dataclass
class FluxLora:
    """A FLUX LoRA file read into modules bound to (part, diffusers / transformers path)."""

    modules: dict[str, AdapterModule]  # "<file module>" or "<file module>:<path>" for a split fused layer
    unknown: dict[str, str] = field(default_factory=dict)  # file key -> why no module uses it
    layout: str = ""  # "kohya", "comfyui", "diffusers", "xlabs"

    def by_target(self) -> dict[tuple[str, str], AdapterModule]:
        return {m.target: m for m in self.modules.values() if m.target}


@functools.lru_cache(maxsize=4)
def _index(config_key: tuple | None) -> dict[str, tuple[str, str]]:
    """Every flat / dotted name a FLUX file may give a module -> ("unet", original) or (part, path)."""
    config = dict(config_key) if config_key else None
    index: dict[str, tuple[str, str]] = {}
    for original in transformer_modules(config):
        flat = original.replace(".", "_")
        for name in (f"lora_unet_{flat}", f"diffusion_model.{original}", original):
            index[name] = ("original", original)
    for path in transformer_linears(config):
        flat = path.replace(".", "_")
        for name in (f"transformer.{path}", f"base_model.model.{path}", f"lora_transformer_{flat}", f"lycoris_{flat}",
                     path):
            index.setdefault(name, ("unet", path))
    for part, (dotted, prefixes) in FLUX_FILE_FACTS["text_encoders"].items():
        for path in text_encoder_linears(part):
            core = path.removeprefix("text_model.")
            for prefix in prefixes:
                index[f"{prefix}_{core.replace('.', '_')}"] = (part, path)
                index[f"{prefix}_text_model_{core.replace('.', '_')}"] = (part, path)
            index[f"{dotted}.{path}"] = (part, path)
            index[f"{dotted}.text_model.{core}"] = (part, path)
    return index


def _config_key(config: Config):
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in config.items())) if config else None


def _xlabs_original(name: str) -> str | None:
    m = re.fullmatch(r"(?:diffusion_model\.)?((?:double|single)_blocks\.\d+)\.processor\.(\w+)", name)
    return f"{m.group(1)}.{_XLABS[m.group(2)]}" if m and m.group(2) in _XLABS else None


def _split(name: str, m: AdapterModule, fused: FusedModule, rows: int | None = None) -> list[AdapterModule]:
    """Per-diffusers-part modules of a module on original layer `fused` (`rows`: how many output rows the file's
    module has, XLabs' single-block qkv covers only to_q | to_k | to_v)."""
    parts = [p for p in fused.parts if rows is None or p[1] + p[2] <= rows]
    if not fused.fused and not fused.swap_halves:  # one original layer is one diffusers layer: any kind, as it is
        return [AdapterModule(name, dict(m.tensors), m.alpha, m.alpha_tensor, part="unet", path=parts[0][0],
                              keys=list(m.keys))]
    if m.kind == "lora" and set(m.tensors) <= {DOWN, UP}:
        up = m.tensors[UP]
        if fused.swap_halves:
            up = up.roll(up.shape[0] // 2, dims=0)
        out = []
        for path, start, size in parts:
            if fused.fused and not up[start:start + size].any():
                continue  # a part the network left alone (zero rows, ΔW 0): not a module of its own
            tensors = {DOWN: m.tensors[DOWN], UP: up[start:start + size].contiguous()}
            out.append(AdapterModule(f"{name}:{path}" if fused.fused else name, tensors, m.alpha, m.alpha_tensor,
                                     part="unet", path=path, keys=list(m.keys)))
        return out
    delta = raw_delta(m) * m.scale  # LoHa / LoKr / full / DoRA-less Tucker: their exact ΔW, by rows
    if "dora_scale" in m.tensors:
        raise UnsupportedError(f"{name}: DoRA on the fused FLUX layer {fused.original} cannot be split onto "
                               "diffusers' separate layers (its magnitude needs the fused base weight)")
    if fused.swap_halves:
        delta = delta.roll(delta.shape[0] // 2, dims=0)
    return [AdapterModule(f"{name}:{path}" if fused.fused else name, {"diff": delta[start:start + size].contiguous()},
                          part="unet", path=path, keys=list(m.keys)) for path, start, size in parts]


def _xlabs_spelling(key: str) -> str:
    """XLabs' `...processor.qkv_lora1.down.weight` in the kohya spelling `...processor.qkv_lora1.lora_down.weight`."""
    return re.sub(r"(\.processor\.\w+_lora\d?)\.(down|up)\.weight$", r"\1.lora_\2.weight", key)


def read_flux_lora(sd: dict[str, torch.Tensor], metadata: dict | None = None, config: Config = None) -> FluxLora:
    """Read a FLUX LoRA state dict in any of the layouts above into modules bound to diffusers paths (transformer:
    part "unet"; CLIP-L "te1"; T5 "te2"). Keys that reach no module are listed in `unknown` with the reason. PEFT
    alphas come from diffusers' `lora_adapter_metadata` header when the file has no `.alpha` keys."""
    table = transformer_modules(config)
    index = _index(_config_key(config))
    peft_alpha = _peft_alphas(metadata or {})
    spelled = {_xlabs_spelling(k): k for k in sd}
    grouped, unknown_keys = group_keys({k: sd[original] for k, original in spelled.items()})
    for m in grouped.values():
        m.keys = [spelled[k] for k in m.keys]  # the file's own keys
    result = FluxLora({}, {spelled[k]: "unknown tensor suffix" for k in unknown_keys})
    layouts = set()
    for name, m in grouped.items():
        alpha = m.tensors.pop("alpha", None)
        if alpha is not None:
            m.alpha, m.alpha_tensor = float(alpha.reshape(())), alpha
        elif "." in name and m.kind == "lora":
            m.alpha = peft_alpha(name, m.rank)
        xlabs = _xlabs_original(name)
        target = ("original", xlabs) if xlabs else index.get(name) or index.get(name.removeprefix("base_model.model."))
        if target is None or m.kind == "none":
            why = "no module of FLUX.1 has this name" if target is None else "module without adapter tensors"
            result.unknown.update({k: why for k in m.keys})
            continue
        kind, path = target
        if kind == "original":
            layouts.add("xlabs" if xlabs else "comfyui" if name.startswith("diffusion_model.") else "kohya")
            rows = m.tensors[UP].shape[0] if xlabs and UP in m.tensors else None
            for part in _split(name, m, table[path], rows):
                result.modules[part.name] = part
        else:
            layouts.add("kohya" if name.startswith("lora_") else "diffusers")
            m.part, m.path = kind, path
            result.modules[name] = m
    seen: dict[tuple[str, str], str] = {}
    for name, m in list(result.modules.items()):
        if m.target in seen:
            result.unknown.update({k: f"second module for {m.path} (first: {seen[m.target]})" for k in m.keys})
            del result.modules[name]
        else:
            seen[m.target] = name
    # the transformer's names tell the layout (ComfyUI-native files keep kohya text-encoder names)
    result.layout = next((x for x in ("xlabs", "comfyui", "kohya") if x in layouts), "diffusers")
    return result
