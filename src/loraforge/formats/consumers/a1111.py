"""Clean-room model of the Lora extension of AUTOMATIC1111 stable-diffusion-webui v1.10.1 (SD 1.x / SD 2.x / SDXL).

Written from the behaviour described in formats.md §2.2, §2.3, §3 and §4 (no A1111 code is copied; A1111 is
AGPL-3.0):

* layer names: `name.replace(".", "_")` of every module of the LDM model (`diffusion_model_input_blocks_4_1_...`) and
  of the text encoders (SD 1.x `transformer_text_model_...`; SD 2.x OpenCLIP `model_transformer_resblocks_N_...`;
  SDXL with the embedder index prefixes `0_` (CLIP-L) and `1_` (OpenCLIP-G)); OpenCLIP attention is one
  `nn.MultiheadAttention` whose q/k/v LoRA modules are applied only when q, k, v **and** out_proj are all present;
* each file key is split on its **first** "." into module and tensor part, so a dotted module name either matches
  nothing or matches a container layer whose tensor set no module type accepts, which raises and loses the file;
* the module name goes through `convert_diffusers_name_to_compvis` (re-implemented from its documented rules, with
  its SDXL gaps: the up-block upsampler index is SD 1.x's and `add_embedding` / `lora_te2_text_projection` have no
  rule), then the `_q/_k/_v_proj` MHA fallback, then `lora_unet` -> `diffusion_model` and `lora_te1_text_model` ->
  `0_transformer_text_model` / `transformer_text_model`;
* `merged_weight`: LoRA/LoCon/Tucker, LoHa, LoKr and DoRA as A1111 computes them. DoRA is input-axis only: an
  output-axis `dora_scale` [out,1] broadcasts against the per-column norm [1,in] without error and gives wrong
  weights; that real behaviour is modelled. `lora_A/lora_B` names are renamed to up/down *and drop alpha*.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import torch

from .keys import ConsumerMergeError
from .tables import Shape, family_of, family_tables, layer_kind  # noqa: F401  (Shape: in the Layer annotation)

VERSION = "1.10.1"
LABEL = "A1111"

Layer = tuple[str, "Shape | None"]  # (kind, weight shape)


# ----------------------------------------------------------------------------------------------------- layer names
def _openclip_name(hf: str) -> tuple[str, str] | None:
    """HF CLIP param -> (OpenCLIP module, param) for the modules A1111 sees, None for plain Parameters."""
    m = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", hf)
    if m:
        n, mod, p = m.groups()
        base = f"transformer.resblocks.{n}"
        if mod in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            return f"{base}.attn", "in_proj_" + p
        rename = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2"}
        rename.update({"mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"})
        return f"{base}.{rename[mod]}", p
    if hf.startswith("text_model.embeddings.token_embedding."):
        return "token_embedding", hf.rsplit(".", 1)[1]
    if hf.startswith("text_model.final_layer_norm."):
        return "ln_final", hf.rsplit(".", 1)[1]
    return None  # positional_embedding, text_projection: nn.Parameter, not modules


def _add(layers: dict[str, Layer], module: str, kind: str, shape) -> None:
    layers[module.replace(".", "_")] = (kind, shape)
    parts = module.split(".")
    for i in range(1, len(parts)):
        layers.setdefault("_".join(parts[:i]), ("container", None))


@functools.lru_cache(maxsize=None)
def layers(family: str) -> dict[str, Layer]:
    """A1111's `network_layer_mapping` for `family`: layer name -> (kind, weight shape)."""
    t = family_tables(family)
    out: dict[str, Layer] = {}
    for k, shape in t.unet_ldm.items():
        if k.endswith(".weight"):
            module = "diffusion_model." + k[: -len(".weight")]
            _add(out, module, layer_kind(module, shape), shape)

    def hf_encoder(prefix: str, role: str) -> None:
        for k, shape in t.consumer_text_encoder(role).items():
            if k.endswith(".weight") and k != "text_projection.weight":
                module = prefix + "transformer." + k[: -len(".weight")]
                _add(out, module, layer_kind(module, shape), shape)

    def openclip_encoder(prefix: str, role: str) -> None:
        for k, shape in t.consumer_text_encoder(role).items():
            named = _openclip_name(k)
            if named is None or not named[1].endswith("weight"):
                continue
            module, param = named
            if param == "in_proj_weight":
                _add(out, prefix + "model." + module, "mha", (3 * shape[0], shape[1]))
            else:
                _add(out, prefix + "model." + module, layer_kind(module, shape), shape)

    if family_of(family) == "sd15":
        hf_encoder("", "te")
    elif family_of(family) == "sd2":
        openclip_encoder("", "te")
    else:
        hf_encoder("0.", "te1")
        openclip_encoder("1.", "te2")
    return out


# ------------------------------------------------------------------------------------------------ name conversion
_RESNET_SUFFIX = {
    "conv1": "in_layers_2",
    "conv2": "out_layers_3",
    "norm1": "in_layers_0",
    "norm2": "out_layers_0",
    "time_emb_proj": "emb_layers_1",
    "conv_shortcut": "skip_connection",
}


def _openclip_suffix(rest: str) -> str:
    if "mlp_fc1" in rest:
        return rest.replace("mlp_fc1", "mlp_c_fc")
    if "mlp_fc2" in rest:
        return rest.replace("mlp_fc2", "mlp_c_proj")
    return rest.replace("self_attn", "attn")


def convert_diffusers_name_to_compvis(key: str, is_sd2: bool) -> str:
    """The module-name rewrite A1111 applies first (kohya/diffusers spelling -> LDM layer name), else `key`."""
    m = re.match(r"lora_unet_conv_in(.*)", key)
    if m:
        return f"diffusion_model_input_blocks_0_0{m[1]}"
    m = re.match(r"lora_unet_conv_out(.*)", key)
    if m:
        return f"diffusion_model_out_2{m[1]}"
    m = re.match(r"lora_unet_time_embedding_linear_(\d+)(.*)", key)
    if m:
        return f"diffusion_model_time_embed_{int(m[1]) * 2 - 2}{m[2]}"
    m = re.match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key)
    if m:
        rest = _RESNET_SUFFIX.get(m[4], m[4]) if m[2] == "resnets" else m[4]
        return f"diffusion_model_input_blocks_{1 + int(m[1]) * 3 + int(m[3])}_{1 if m[2] == 'attentions' else 0}_{rest}"
    m = re.match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", key)
    if m:
        rest = _RESNET_SUFFIX.get(m[3], m[3]) if m[1] == "resnets" else m[3]
        return f"diffusion_model_middle_block_{1 if m[1] == 'attentions' else int(m[2]) * 2}_{rest}"
    m = re.match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key)
    if m:
        rest = _RESNET_SUFFIX.get(m[4], m[4]) if m[2] == "resnets" else m[4]
        return f"diffusion_model_output_blocks_{int(m[1]) * 3 + int(m[3])}_{1 if m[2] == 'attentions' else 0}_{rest}"
    m = re.match(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv", key)
    if m:
        return f"diffusion_model_input_blocks_{3 + int(m[1]) * 3}_0_op"
    m = re.match(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv", key)
    if m:  # SD 1.x layout: up block 0 has no attention, every other one has
        return f"diffusion_model_output_blocks_{2 + int(m[1]) * 3}_{2 if int(m[1]) > 0 else 1}_conv"
    m = re.match(r"lora_te_text_model_encoder_layers_(\d+)_(.+)", key)
    if m:
        if is_sd2:
            return f"model_transformer_resblocks_{m[1]}_{_openclip_suffix(m[2])}"
        return f"transformer_text_model_encoder_layers_{m[1]}_{m[2]}"
    m = re.match(r"lora_te2_text_model_encoder_layers_(\d+)_(.+)", key)
    if m:
        return f"1_model_transformer_resblocks_{m[1]}_{_openclip_suffix(m[2])}"
    return key


def resolve(module: str, family: str) -> tuple[str, str | None]:
    """(network key, layer name or None) for a file's module part, following A1111's lookup chain."""
    table = layers(family)
    is_sd2 = "model_transformer_resblocks" in table
    key = convert_diffusers_name_to_compvis(module, is_sd2)
    layer = key if key in table else None
    if layer is None:
        m = re.match(r"(.*)_([qkv]_proj)$", key)
        if m and m[1] in table:
            layer = m[1]  # MultiheadAttention; the network key keeps the _q/_k/_v_proj name
    if layer is None and "lora_unet" in module:
        key = module.replace("lora_unet", "diffusion_model")
        layer = key if key in table else None
    elif layer is None and "lora_te1_text_model" in module:
        key = module.replace("lora_te1_text_model", "0_transformer_text_model")
        if key not in table:
            key = module.replace("lora_te1_text_model", "transformer_text_model")
        layer = key if key in table else None
    elif layer is None and "oft_unet" in module:
        key = module.replace("oft_unet", "diffusion_model")
        layer = key if key in table else None
    if layer is None and "oft_diag" in key:
        key = module.replace("lora_te1_text_model", "0_transformer_text_model")
        layer = key if key in table else None
    return key, layer


# ---------------------------------------------------------------------------------------------------------- loading
def module_type(parts) -> str | None:
    """The first A1111 module type accepting the tensor names of one network key, in A1111's order."""
    if {"lora_up.weight", "lora_down.weight"} <= set(parts) or {"lora_A.weight", "lora_B.weight"} <= set(parts):
        return "lora"
    if {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= set(parts):
        return "loha"
    if "weight" in parts:
        return "ia3"
    has1 = "lokr_w1" in parts or {"lokr_w1_a", "lokr_w1_b"} <= set(parts)
    has2 = "lokr_w2" in parts or {"lokr_w2_a", "lokr_w2_b"} <= set(parts)
    if has1 and has2:
        return "lokr"
    if "diff" in parts:
        return "full"
    if {"w_norm", "b_norm"} <= set(parts):
        return "norm"
    if {"a1.weight", "a2.weight", "b1.weight", "b2.weight"} <= set(parts):
        return "glora"
    if "oft_blocks" in parts or "oft_diag" in parts:
        return "oft"
    return None


@dataclass
class NetModule:
    key: str  # network key (converted name)
    layer: str  # layer it is attached to
    kind: str  # module type
    file_modules: set[str] = field(default_factory=set)  # the file's module parts that fed it
    parts: dict = field(default_factory=dict)  # tensor part -> tensor


@dataclass
class LoadResult:
    """What `load_network` (and then the per-layer apply) does with a file."""

    modules: dict[str, NetModule]  # network key -> module
    applied: set[str]  # file module parts whose weight A1111 changes
    skipped: dict[str, str]  # file module part -> why it is matched but never applied
    unmatched: list[str]  # keys that matched no layer (only logging.debug-ed by A1111)
    fatal: str | None = None  # an exception that makes A1111 drop the whole file


def load(sd, family: str) -> LoadResult:
    """Replay A1111's `load_network` + apply rules on a state dict (names, shapes and alpha values only)."""
    table = layers(family)
    modules: dict[str, NetModule] = {}
    unmatched: list[str] = []
    for full_key, value in sd.items():
        module, _, part = full_key.partition(".")
        if module == "bundle_emb":
            continue  # bundled textual-inversion embeddings, registered separately
        key, layer = resolve(module, family)
        if layer is None:
            unmatched.append(full_key)
            continue
        entry = modules.setdefault(key, NetModule(key, layer, ""))
        entry.file_modules.add(module)
        entry.parts[part] = value
    fatal = None
    for entry in modules.values():
        entry.kind = module_type(entry.parts) or ""
        layer_kind_ = table[entry.layer][0]
        if not entry.kind:
            fatal = fatal or (
                f"AssertionError: no module type accepts the keys of {entry.key}: {', '.join(sorted(entry.parts))}"
            )
        elif layer_kind_ == "container" or (entry.kind == "lora" and layer_kind_ not in ("linear", "conv", "mha")):
            fatal = fatal or f"{entry.key} matched a {layer_kind_} layer that {entry.kind} cannot patch"
        elif "alpha" in entry.parts and entry.parts["alpha"].numel() != 1:
            fatal = fatal or f"{entry.key}.alpha: .item() on a tensor of {entry.parts['alpha'].numel()} elements"
    applied: set[str] = set()
    skipped: dict[str, str] = {}
    for entry in modules.values():
        kind = table[entry.layer][0]
        mha = entry.layer if kind == "mha" else None
        if kind == "linear" and entry.layer.endswith("_out_proj"):
            owner = entry.layer[: -len("_out_proj")]
            mha = owner if table.get(owner, ("",))[0] == "mha" else None
        why = ""
        if mha is not None and not all(f"{mha}_{p}" in modules for p in ("q_proj", "k_proj", "v_proj", "out_proj")):
            why = "OpenCLIP MultiheadAttention: q, k, v and out_proj are applied only when all four are present"
        elif kind == "embedding":
            why = "embedding layers are never patched (A1111 hooks Linear, Conv2d, norms and MultiheadAttention)"
        for fm in entry.file_modules:
            if why:
                skipped[fm] = why
            else:
                applied.add(fm)
    return LoadResult(modules, applied, skipped, unmatched, fatal)


# ------------------------------------------------------------------------------------------------------------- math
def _lora_updown(W: torch.Tensor, t: dict) -> tuple[torch.Tensor, list[int], int]:
    up, down, mid = t["lora_up.weight"].float(), t["lora_down.weight"].float(), t.get("lora_mid.weight")
    rank = down.shape[0]
    if W.dim() == 2:  # Linear / MHA: every LoRA weight becomes a 2-D Linear weight
        up, down = up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1)
        if mid is not None:
            raise ConsumerMergeError("lora_mid on a Linear layer (einsum over a 2-D core fails)")
    else:  # Conv2d: down keeps its kernel (or becomes 1x1), up is 1x1, mid keeps its kernel
        if down.dim() == 2:
            down = down.reshape(down.shape[0], -1, 1, 1)
        up = up.reshape(up.shape[0], -1, 1, 1)
    out_shape = [up.shape[0], down.shape[1]]
    if mid is not None:
        mid = mid.float()
        updown = torch.einsum("nmkl,in,mj->ijkl", mid, up.flatten(1), down.flatten(1))
        out_shape += list(mid.shape[2:])
    else:
        if down.dim() == 4:
            out_shape += list(down.shape[2:])
        updown = (up.flatten(1) @ down.flatten(1)).reshape(out_shape)
    return updown, out_shape, rank


def _cp(t, wa, wb):
    """A1111's Tucker rebuild: core t [r,r,kh,kw], wa [r, out], wb [r, in] -> [out, in, kh, kw]."""
    return torch.einsum("ijkl,ir->rjkl", torch.einsum("ijkl,jr->irkl", t.float(), wb.float()), wa.float())


def _loha_updown(t: dict) -> tuple[torch.Tensor, list[int], int]:
    w1a, w1b, w2a, w2b = (t[k].float() for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"))
    out_shape = [w1a.shape[0], w1b.shape[1]]
    if "hada_t1" in t:
        out_shape = [w1a.shape[1], w1b.shape[1]] + list(t["hada_t1"].shape[2:])
        one = _cp(t["hada_t1"], w1a, w1b)
    else:
        if w1b.dim() == 4:
            out_shape += list(w1b.shape[2:])
        one = (w1a.reshape(w1a.shape[0], -1) @ w1b.reshape(w1b.shape[0], -1)).reshape(out_shape)
    if "hada_t2" in t:
        two = _cp(t["hada_t2"], w2a, w2b)
    else:
        two = (w2a.reshape(w2a.shape[0], -1) @ w2b.reshape(w2b.shape[0], -1)).reshape(out_shape)
    return one * two, out_shape, w1b.shape[0]


def _lokr_updown(W: torch.Tensor, t: dict) -> tuple[torch.Tensor, list[int], int | None]:
    rank = t["lokr_w1_b"].shape[0] if "lokr_w1_b" in t else None
    rank = t["lokr_w2_b"].shape[0] if "lokr_w2_b" in t else rank
    w1 = t["lokr_w1"].float() if "lokr_w1" in t else t["lokr_w1_a"].float() @ t["lokr_w1_b"].float()
    if "lokr_w2" in t:
        w2 = t["lokr_w2"].float()
    elif "lokr_t2" in t:
        w2 = _cp(t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
    else:
        w2 = t["lokr_w2_a"].float() @ t["lokr_w2_b"].float()
    out_shape = list(W.shape) if W.dim() == 4 else [w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1]]
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    return torch.kron(w1, w2).reshape(out_shape), out_shape, rank


def merged_weight(W: torch.Tensor, tensors: dict, multiplier: float = 1.0) -> torch.Tensor:
    """The weight A1111 v1.10.1 computes for one module (`tensors`: tensor part -> tensor) at `multiplier`.

    `W` is the layer weight (for an OpenCLIP q/k/v module: its slice of `in_proj_weight`).
    """
    W = W.detach().float().clone()
    t = dict(tensors)
    kind = module_type(t)
    if kind == "lora" and "lora_up.weight" not in t:  # lora_A/lora_B: renamed, everything else is dropped
        t = {"lora_up.weight": t["lora_B.weight"], "lora_down.weight": t["lora_A.weight"]}
    try:
        if kind == "lora":
            updown, out_shape, dim = _lora_updown(W, t)
        elif kind == "loha":
            updown, out_shape, dim = _loha_updown(t)
        elif kind == "lokr":
            updown, out_shape, dim = _lokr_updown(W, t)
        elif kind == "full":
            updown, out_shape, dim = t["diff"].float(), list(t["diff"].shape), None
        elif kind == "norm":  # ModuleTypeNorm: updown = w_norm, the bias gets b_norm; no dim, so scale 1
            updown, out_shape, dim = t["w_norm"].float(), list(W.shape), None
        elif kind is None:
            raise ConsumerMergeError("no A1111 module type accepts these tensors (the whole file fails to load)")
        else:
            raise NotImplementedError(f"{kind} merge is recognised but not modelled")
        # finalize_updown
        if "bias" in t:
            updown = (updown.reshape(t["bias"].shape) + t["bias"].float()).reshape(out_shape)
        if len(out_shape) == 4:
            updown = updown.reshape(out_shape)
        if updown.numel() == W.numel():
            updown = updown.reshape(W.shape)
        if "scale" in t:
            scale = t["scale"].item()
        elif dim is not None and "alpha" in t:
            scale = t["alpha"].item() / dim
        else:
            scale = 1.0
        updown = updown * scale
        if "dora_scale" in t:
            merged = updown + W
            norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True)
            norm = norm.reshape(merged.shape[1], *[1] * (W.dim() - 1)).transpose(0, 1)
            updown = merged * (t["dora_scale"].float() / norm) - W
        result = W + updown * multiplier
    except RuntimeError as e:  # A1111 swallows per-layer RuntimeErrors; the layer keeps its weight
        raise ConsumerMergeError(f"A1111 skips the layer: {e}") from e
    if result.shape != W.shape:
        raise ConsumerMergeError(f"A1111 skips the layer: ΔW {tuple(updown.shape)} vs weight {tuple(W.shape)}")
    return result
