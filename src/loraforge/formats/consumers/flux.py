"""How ComfyUI (and Forge, which keeps ComfyUI's rules for kohya FLUX files) and diffusers read a FLUX.1 LoRA file:
clean-room models written from their public behaviour (ComfyUI `comfy/lora.py` key maps, `comfy/utils.py`
`flux_to_diffusers`, `comfy/lora_convert.py`; diffusers 0.42.1 `FluxLoraLoaderMixin.lora_state_dict`, run itself as
far as it is pure dict work, like `diffusers_rules` does for SD). No consumer code is included.

ComfyUI holds the original (BFL) transformer, `diffusion_model.double_blocks.0.img_attn.qkv.weight`, CLIP-L as
`clip_l.transformer.text_model.…` and T5 as `t5xxl.transformer.…`. Its key map sends
* `lora_unet_<original with "_">` and `diffusion_model.<original>` to that weight (kohya, ComfyUI-native);
* `transformer.<diffusers path>`, `lycoris_<…>`, `lora_transformer_<…>` and the bare diffusers path to a row slice of
  the fused weight (`to_k` -> rows [h, 2h) of `img_attn.qkv`; `proj_mlp` -> rows [3h, 7h) of `linear1`), with the
  halves of `norm_out.linear` swapped onto `final_layer.adaLN_modulation.1`; `single_blocks.N.linear1_qkv` to rows
  [0, 3h) of `linear1`;
* CLIP-L `lora_te_` / `lora_te1_text_model_encoder_layers_…` and `text_encoder.text_model.encoder.layers.…`; T5
  `lora_te2_<path>` (OneTrainer) and `lora_te3_<path>` (sd-scripts); `text_encoders.<key>` for any text weight.
An XLabs file holding every block (`double_blocks.18.processor.qkv_lora2`, `single_blocks.37.processor.qkv_lora`) is
renamed first (`qkv_lora1` -> `img_attn.qkv`, `qkv_lora` -> `linear1_qkv`, ...); other XLabs files are not read.

The widths come from the full-size (or the given) transformer config built on the meta device; the oracle keeps its
own key rules and slices (hidden size h from the config, MLP = 4h as ComfyUI assumes).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field

import torch

from ...families.flux import flux_components
from .comfyui import LoadResult, load_with_map, merged_weight
from .keys import ConsumerMergeError, group_modules, lora_pair

_CLIP_MAP = {"mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2", "self_attn.k_proj": "self_attn_k_proj",
             "self_attn.q_proj": "self_attn_q_proj", "self_attn.v_proj": "self_attn_v_proj",
             "self_attn.out_proj": "self_attn_out_proj"}  # fmt: skip
_USO = {".qkv_lora2.": ".txt_attn.qkv.", ".qkv_lora1.": ".img_attn.qkv.", ".proj_lora1.": ".img_attn.proj.",
        ".proj_lora2.": ".txt_attn.proj.", ".qkv_lora.": ".linear1_qkv.", ".proj_lora.": ".linear2.",
        ".processor.": "."}  # fmt: skip


def _config_key(config, text_configs=None) -> tuple[str, str, str]:
    """The cache key of an architecture: the transformer config and the (CLIP-L, T5) configs (None: full size), as
    JSON."""
    full = flux_components()
    clip, t5 = text_configs or (None, None)
    return tuple(json.dumps({k: v for k, v in c.items() if not k.startswith("_")}, sort_keys=True, default=str)
                 for c in (config or full["transformer"], clip or full["text_encoder"], t5 or full["text_encoder_2"]))


@functools.lru_cache(maxsize=4)
def _meta(arch_key) -> dict[str, dict[str, tuple[int, ...]]]:
    """Weight shapes of ComfyUI's FLUX model: `diffusion_model.` (original names), `clip_l.`, `t5xxl.`."""
    from accelerate import init_empty_weights  # lazy: heavy
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    config, clip_config, t5_config = (json.loads(k) for k in arch_key)
    with init_empty_weights():
        dit = FluxTransformer2DModel.from_config(config)
        clip = CLIPTextModel(CLIPTextConfig.from_dict(clip_config))
        t5 = T5EncoderModel(T5Config.from_dict(t5_config))
    weights = {n: tuple(p.shape) for n, p in dit.named_parameters()}
    keys = {}
    for diffusers, (original, rows, _fn) in _flux_to_original(config).items():
        if diffusers in weights:  # a fused weight is as tall as its last slice reaches
            size = weights[diffusers][0] if rows is None else rows[0] + rows[1]
            height = max(keys.get(original, (0,))[0], size)
            keys[original] = (height,) + weights[diffusers][1:]
    keys.update({f"clip_l.transformer.text_model.{n.removeprefix('text_model.')}": tuple(p.shape)
                 for n, p in clip.named_parameters() if n.endswith(".weight")})
    keys.update({f"t5xxl.transformer.{n}": tuple(p.shape) for n, p in t5.named_parameters() if n.endswith(".weight")})
    return keys


def _flux_to_original(config) -> dict[str, tuple[str, tuple[int, int] | None, str | None]]:
    """ComfyUI's diffusers -> original weight table: diffusers weight -> (model key, (first row, rows) or None,
    "swap" for the final modulation)."""
    h = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    p = "diffusion_model."
    out: dict[str, tuple[str, tuple[int, int] | None, str | None]] = {}
    for i in range(int(config["num_layers"])):
        d, o = f"transformer_blocks.{i}.", f"{p}double_blocks.{i}."
        for n, x in enumerate("qkv"):
            out[f"{d}attn.to_{x}.weight"] = (f"{o}img_attn.qkv.weight", (n * h, h), None)
            out[f"{d}attn.add_{x}_proj.weight"] = (f"{o}txt_attn.qkv.weight", (n * h, h), None)
        for dn, on in (("attn.to_out.0", "img_attn.proj"), ("norm1.linear", "img_mod.lin"),
                       ("norm1_context.linear", "txt_mod.lin"), ("attn.to_add_out", "txt_attn.proj"),
                       ("ff.net.0.proj", "img_mlp.0"), ("ff.net.2", "img_mlp.2"),
                       ("ff_context.net.0.proj", "txt_mlp.0"), ("ff_context.net.2", "txt_mlp.2")):
            out[f"{d}{dn}.weight"] = (f"{o}{on}.weight", None, None)
    for i in range(int(config["num_single_layers"])):
        d, o = f"single_transformer_blocks.{i}.", f"{p}single_blocks.{i}."
        for n, x in enumerate("qkv"):
            out[f"{d}attn.to_{x}.weight"] = (f"{o}linear1.weight", (n * h, h), None)
        out[f"{d}proj_mlp.weight"] = (f"{o}linear1.weight", (3 * h, 4 * h), None)
        out[f"{d}norm.linear.weight"] = (f"{o}modulation.lin.weight", None, None)
        out[f"{d}proj_out.weight"] = (f"{o}linear2.weight", None, None)
    for dn, on in (("proj_out", "final_layer.linear"), ("x_embedder", "img_in"), ("context_embedder", "txt_in"),
                   ("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer"),
                   ("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer"),
                   ("time_text_embed.text_embedder.linear_1", "vector_in.in_layer"),
                   ("time_text_embed.text_embedder.linear_2", "vector_in.out_layer"),
                   ("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer"),
                   ("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer")):
        out[f"{dn}.weight"] = (f"{p}{on}.weight", None, None)
    out["norm_out.linear.weight"] = (f"{p}final_layer.adaLN_modulation.1.weight", None, "swap")
    return out


def comfy_model_keys(config: dict | None = None, text_configs=None) -> dict[str, tuple[int, ...]]:
    """Weight key -> shape of the model ComfyUI holds: the transformer of `config` and the text encoders of
    `text_configs` ((CLIP-L config, T5 config); None: full-size FLUX.1)."""
    return _meta(_config_key(config, text_configs))


def comfy_key_map(config: dict | None = None, text_configs=None) -> dict:
    """LoRA module name -> model weight key, or (key, (first row, rows) or None, "swap" or None)."""
    config = config or flux_components()["transformer"]
    h = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    keys = comfy_model_keys(config, text_configs)
    kmap: dict = {}
    for k in keys:
        if k.startswith("diffusion_model.") and k.endswith(".weight"):
            bare = k[len("diffusion_model."):-len(".weight")]
            kmap["lora_unet_" + bare.replace(".", "_")] = k
            kmap[k[:-len(".weight")]] = k
            if bare.endswith(".linear1"):
                kmap[k[:-len(".weight")] + "_qkv"] = (k, (0, 3 * h), None)
        elif k.startswith(("clip_l.", "t5xxl.")):
            kmap["text_encoders." + k[:-len(".weight")]] = k
    for diffusers, (key, rows, fn) in _flux_to_original(config).items():
        target = key if rows is None and fn is None else (key, rows, fn)
        stem = diffusers[:-len(".weight")]
        flat = stem.replace(".", "_")
        for name in (f"transformer.{stem}", f"lycoris_{flat}", f"lora_transformer_{flat}", stem):
            kmap[name] = target
    for k in keys:
        m = re.fullmatch(r"clip_l\.transformer\.text_model\.encoder\.layers\.(\d+)\.(.+)\.weight", k)
        if m and m.group(2) in _CLIP_MAP:
            b, c = m.groups()
            for prefix in ("lora_te_", "lora_te1_"):
                kmap[f"{prefix}text_model_encoder_layers_{b}_{_CLIP_MAP[c]}"] = k
            kmap[f"text_encoder.text_model.encoder.layers.{b}.{c}"] = k
        if k.startswith("t5xxl.transformer."):
            flat = k[len("t5xxl.transformer."):-len(".weight")].replace(".", "_")
            kmap[f"lora_te2_{flat}"] = k  # OneTrainer (with CLIP-L present)
            kmap[f"lora_te3_{flat}"] = k  # sd-scripts
    return kmap


def _comfy_convert(sd: dict) -> dict:
    """ComfyUI's file-level renaming before the key map: an XLabs/USO file holding every block."""
    if "single_blocks.37.processor.qkv_lora.up.weight" in sd and "double_blocks.18.processor.qkv_lora2.up.weight" in sd:
        out = {}
        for k, v in sd.items():
            k = k.replace(".down.weight", ".lora_down.weight").replace(".up.weight", ".lora_up.weight")
            for a, b in _USO.items():
                k = k.replace(a, b)
            out["diffusion_model." + k] = v
        return out
    return sd


def comfy_load(sd: dict, config: dict | None = None, text_configs=None) -> tuple[dict, LoadResult]:
    """(the state dict as ComfyUI sees it after renaming, what its loader does with it)."""
    sd = _comfy_convert(sd)
    return sd, load_with_map(sd, comfy_key_map(config, text_configs), comfy_model_keys(config, text_configs),
                             "FLUX.1")


def comfy_delta(sd: dict, result: LoadResult, key: str, shape, strength: float = 1.0) -> torch.Tensor:
    """ΔW ComfyUI adds to model weight `key` (shape `shape`): every applied patch onto it, sliced and swapped."""
    total = torch.zeros(shape)
    for module, patch in result.applied.items():
        target = patch.target
        base, rows, fn = (target, None, None) if isinstance(target, str) else target
        if base != key:
            continue
        tensors = {s: sd[f"{module}.{s}"] for s in _suffixes(sd, module)}
        part = total if rows is None else total[rows[0]:rows[0] + rows[1]]
        diff = merged_weight(torch.zeros(part.shape), tensors, strength)
        if fn == "swap":
            diff = diff.roll(diff.shape[0] // 2, dims=0)
        part += diff
    return total


def _suffixes(sd, module):
    return [k[len(module) + 1:] for k in sd if k.startswith(module + ".")]


# ------------------------------------------------------------------------------------------------------ diffusers
@dataclass
class FluxDiffusersResult:
    loads: bool
    reason: str | None = None
    loaded: dict[str, tuple[str, str]] = field(default_factory=dict)  # diffusers target -> (component, target)
    dropped: list[str] = field(default_factory=list)  # converted keys diffusers silently leaves out
    state_dict: dict = field(default_factory=dict)  # the converted PEFT state dict
    alphas: dict = field(default_factory=dict)


def diffusers_check(sd: dict, config: dict | None = None, text_configs=None) -> FluxDiffusersResult:
    """Replay `FluxPipeline.load_lora_weights(sd)`: diffusers' own `lora_state_dict` conversion, then PEFT's
    injection modelled on the meta-device transformer / CLIP-L (a target the model lacks is dropped)."""
    import diffusers.utils.logging as dlog  # lazy: heavy
    from diffusers.loaders import FluxLoraLoaderMixin

    work = {k: v.view(v.shape) for k, v in sd.items()}
    previous = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        state_dict, alphas = FluxLoraLoaderMixin.lora_state_dict(dict(work), return_alphas=True)
    except Exception as e:  # noqa: BLE001 - any exception is a refused file
        return FluxDiffusersResult(False, f"lora_state_dict: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
    finally:
        dlog.set_verbosity(previous)
    if not all("lora" in k for k in state_dict):
        return FluxDiffusersResult(False, "ValueError: Invalid LoRA checkpoint (a key without 'lora')")
    keys = comfy_model_keys(config, text_configs)  # the same meta models, in diffusers naming below
    transformer = set(_flux_to_original(config or flux_components()["transformer"]))
    clip = {k[len("clip_l.transformer."):] for k in keys if k.startswith("clip_l.")}
    from diffusers.utils.state_dict_utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft

    text = {k: v for k, v in state_dict.items() if k.startswith("text_encoder.")}
    if text:  # the text-encoder loader's own renaming (`to_q_lora.down` -> `q_proj.lora_A`)
        state_dict = {k: v for k, v in state_dict.items() if k not in text}
        try:  # a CLIP part holding only q/k/v (no out_proj, no MLP) is refused
            state_dict.update(convert_state_dict_to_peft(convert_state_dict_to_diffusers(text)))
        except Exception as e:  # noqa: BLE001 - any exception is a refused file
            return FluxDiffusersResult(False, f"text_encoder: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
    result = FluxDiffusersResult(True, state_dict=state_dict, alphas=alphas or {})
    for k in state_dict:
        component, _, rest = k.partition(".")
        target = rest.split(".lora")[0]
        known = transformer if component == "transformer" else clip if component == "text_encoder" else set()
        if f"{target}.weight" in known:
            result.loaded[k.split(".lora")[0]] = (component, target)
    # keys the conversion leaves without a component prefix (kohya embedders, final layer) are filtered out by
    # `load_lora_adapter(prefix="transformer")`
    result.dropped = sorted(k for k in state_dict if k.split(".lora")[0] not in result.loaded)
    return result


def diffusers_delta(result: FluxDiffusersResult, target: str) -> torch.Tensor:
    """ΔW diffusers adds to diffusers module `target` ("transformer.<path>"), PEFT scale alpha / rank (kohya files
    have their alphas folded into the weights, so alpha = rank)."""
    sd = result.state_dict
    pair = lora_pair({k[len(target) + 1:]: v for k, v in sd.items() if k.startswith(target + ".lora")})
    if pair is None:
        raise ConsumerMergeError(f"diffusers holds no LoRA for {target}")
    up, down = sd[f"{target}.{pair[0]}"].float(), sd[f"{target}.{pair[1]}"].float()
    alpha = result.alphas.get(f"{target}.alpha")
    scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
    return up @ down * scale


def file_modules(sd) -> set[str]:
    return set(group_modules(sd))
