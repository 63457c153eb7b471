"""Clean-room model of how ComfyUI v0.19.3 loads a LoRA-family file into SD 1.x / SD 2.x / SDXL.

Written from the behaviour described in formats.md §2.1, §3 and §4 (no ComfyUI code is copied; ComfyUI is GPL-3.0):

* the key map: LoRA module name -> model weight key (`model_lora_keys_unet`, built from the model's LDM keys and from
  the `unet_to_diffusers` derivation, and `model_lora_keys_clip` for clip_l / clip_h / clip_g incl.
  `lora_te2_text_projection`);
* `load_lora`: for every name of the key map, every adapter class is tried on `<name><suffix>` (the last match wins);
  alpha/dora_scale are consumed for any name that exists; keys never consumed are logged as "lora key not loaded";
  a patch whose target the model does not hold is dropped silently;
* `merged_weight`: the weight each adapter produces (LoRA/LoCon incl. Tucker `lora_mid`, LoHa incl. Tucker, LoKr with
  its full-or-factored halves and its alpha rule, DoRA). DoRA models ComfyUI's real behaviour, including its known
  bug: with an output-axis `dora_scale` ([out,1,...]) the norm is taken over the *original* W instead of W+ΔW
  (Comfy-Org/ComfyUI PR #15458, open at v0.19.3), so the merge differs from the trained DoRA weight.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from .keys import LORA_PAIRS, ConsumerMergeError, adapter_kind, join
from .tables import FamilyTables, Shape, family_of, family_tables

VERSION = "0.19.3"
LABEL = "ComfyUI"

_CLIP_NAMES = {"sd15": {"te": "clip_l"}, "sd2": {"te": "clip_h"}, "sdxl": {"te1": "clip_l", "te2": "clip_g"}}
_CLIP_MAP = {  # HF module inside a layer -> kohya spelling
    "mlp.fc1": "mlp_fc1",
    "mlp.fc2": "mlp_fc2",
    "self_attn.k_proj": "self_attn_k_proj",
    "self_attn.q_proj": "self_attn_q_proj",
    "self_attn.v_proj": "self_attn_v_proj",
    "self_attn.out_proj": "self_attn_out_proj",
}


@functools.lru_cache(maxsize=None)
def model_keys(family: str) -> dict[str, Shape]:
    """The state-dict keys (weights and biases) ComfyUI's model + CLIP objects hold for `family`, with shapes."""
    t = family_tables(family)
    keys = {f"diffusion_model.{k}": v for k, v in t.unet_ldm.items()}
    for role, clip in _CLIP_NAMES[family_of(family)].items():
        for k, v in t.consumer_text_encoder(role).items():
            if k == "text_projection.weight":
                keys[f"{clip}.transformer.text_projection.weight"] = v
            else:
                keys[f"{clip}.transformer.{k}"] = v
    return keys


def _unet_key_map(t: FamilyTables, sdk) -> dict[str, str]:
    key_map: dict[str, str] = {}
    for k in sdk:
        if not k.startswith("diffusion_model."):
            continue
        if k.endswith(".weight"):
            stem = k[: -len(".weight")]
            key_map["lora_unet_" + stem[len("diffusion_model.") :].replace(".", "_")] = k
            key_map[stem] = k  # generic: the model key itself
        else:
            key_map[k] = k
    for d, ldm in t.diffusers_to_ldm.items():
        if not d.endswith(".weight"):
            continue
        target = "diffusion_model." + ldm
        stem = d[: -len(".weight")]
        key_map["lora_unet_" + stem.replace(".", "_")] = target
        key_map["lycoris_" + stem.replace(".", "_")] = target  # SimpleTuner
        old_diffusers = stem.replace(".to_", ".processor.to_")  # only the old attn-processor names
        if old_diffusers.endswith(".to_out.0"):
            old_diffusers = old_diffusers[: -len(".0")]
        key_map[old_diffusers] = target
        key_map["unet." + old_diffusers] = target
    return key_map


def _clip_aliases(clips: set[str]) -> dict[str, tuple[tuple[str, ...], str]]:
    """clip name -> (kohya prefixes, diffusers prefix) ComfyUI maps onto it. OpenCLIP-G takes the second-encoder
    names only next to CLIP-L (SDXL); alone (refiner, Cascade) it takes the single-encoder names."""
    aliases = {"clip_l": (("lora_te", "lora_te1"), "text_encoder"), "clip_h": (("lora_te", "lora_te1"), "text_encoder")}
    if "clip_l" in clips:
        aliases["clip_g"] = (("lora_te2",), "text_encoder_2")
    else:
        aliases["clip_g"] = (("lora_te", "lora_prior_te"), "text_encoder")
    return aliases


def _clip_key_map(family: str, sdk) -> dict[str, str]:
    key_map = {
        "text_encoders." + k[: -len(".weight")]: k
        for k in sdk
        if k.endswith(".weight") and not k.startswith("diffusion_model.")
    }
    clips = {k.split(".", 1)[0] for k in sdk if k.startswith("clip_")}
    for clip, (kohya_prefixes, diffusers_prefix) in _clip_aliases(clips).items():
        for layer in range(32):
            for hf, kohya in _CLIP_MAP.items():
                target = f"{clip}.transformer.text_model.encoder.layers.{layer}.{hf}.weight"
                if target not in sdk:
                    continue
                for prefix in kohya_prefixes:
                    key_map[f"{prefix}_text_model_encoder_layers_{layer}_{kohya}"] = target
                key_map[f"{diffusers_prefix}.text_model.encoder.layers.{layer}.{hf}"] = target
    projection = "clip_g.transformer.text_projection.weight"
    if projection in sdk:
        key_map["lora_prior_te_text_projection"] = projection
        key_map["lora_te2_text_projection"] = projection
    return key_map


@functools.lru_cache(maxsize=None)
def key_map(family: str) -> dict[str, str]:
    """LoRA module name -> model weight key, as `model_lora_keys_unet` + `model_lora_keys_clip` build it."""
    sdk = model_keys(family)
    out = _unet_key_map(family_tables(family), sdk)
    out.update(_clip_key_map(family, sdk))
    return out


# ---------------------------------------------------------------------------------------------------------- loading
_SUFFIX_GROUPS = {  # adapter -> suffixes it may consume
    "lokr": ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2"),
    "glora": ("a1.weight", "a2.weight", "b1.weight", "b2.weight"),
}


def _detect_adapters(has) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """Every adapter class that accepts the names: (kind, consumed suffixes, missing required suffixes)."""
    found = []
    for up, down in LORA_PAIRS:
        if has(up):
            used = [up, down]
            if up == "lora_up.weight":
                used += [s for s in ("lora_mid.weight", "reshape_weight") if has(s)]
            found.append(("lora", tuple(used), () if has(down) else (down,)))
            break
    if has("hada_w1_a"):
        req = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b") + (("hada_t1", "hada_t2") if has("hada_t1") else ())
        found.append(("loha", req, tuple(s for s in req if not has(s))))
    if any(has(s) for s in ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w2_a")):
        found.append(("lokr", tuple(s for s in _SUFFIX_GROUPS["lokr"] if has(s)), ()))
    if has("a1.weight"):
        req = _SUFFIX_GROUPS["glora"]
        found.append(("glora", req, tuple(s for s in req if not has(s))))
    return found


@dataclass
class Patch:
    module: str  # the LoRA name that matched (the file's module)
    target: str  # model weight key
    kind: str  # lora / loha / lokr / glora / oft / boft / diff / set / norm
    keys: list[str] = field(default_factory=list)


@dataclass
class LoadResult:
    """What `load_lora` + `add_patches` do with a file."""

    patches: dict[str, Patch]  # target -> last patch for it
    applied: dict[str, Patch]  # module -> patch whose target exists in the model
    dropped: dict[str, str]  # module -> why a loaded patch never reaches a weight
    not_loaded: list[str]  # keys logged as "lora key not loaded"
    fatal: str | None = None  # an exception that aborts the whole load


def load(sd, family: str) -> LoadResult:
    """Replay ComfyUI's loader on a state dict (only key names, shapes and alpha values are read)."""
    return load_with_map(sd, key_map(family), model_keys(family), family_of(family))


def load_with_map(sd, kmap: dict, mkeys, model_label: str) -> LoadResult:
    """`load` with an explicit key map (LoRA name -> weight key, or a (weight key, slice, function) tuple as ComfyUI
    keeps for fused layers) and the model's weight keys."""
    sdk = set(sd)
    patches: dict[str, Patch] = {}
    producers: list[tuple[str, str]] = []  # (name, target) for every name that produced a patch
    loaded: set[str] = set()
    fatal = None
    for x, target in kmap.items():
        if next(_candidates(x, sdk), None) is None:  # fast path: no key of the file is <x><suffix>
            continue

        def has(s, x=x):
            return join(x, s) in sdk

        def patch(kind, suffixes, x=x, target=target):
            keys = [join(x, s) for s in suffixes]
            patches[target] = Patch(x, target, kind, keys)
            producers.append((x, target))
            loaded.update(keys)

        if has("alpha"):
            n = sd[join(x, "alpha")].numel()
            if n != 1:
                fatal = fatal or f"{join(x, 'alpha')}: .item() on a tensor of {n} elements raises"
            loaded.add(join(x, "alpha"))
        if has("dora_scale"):
            loaded.add(join(x, "dora_scale"))
        for kind, used, missing in _detect_adapters(has):
            if missing:
                fatal = fatal or f"KeyError {join(x, missing[0])!r} while loading {x}"
                continue
            patch(kind, used)
        blocks = sd.get(join(x, "oft_blocks"))
        if blocks is not None and blocks.dim() in (3, 4):
            patch("oft" if blocks.dim() == 3 else "boft", [s for s in ("oft_blocks", "rescale") if has(s)])
        if has("w_norm"):
            patch("norm", ["w_norm"])
            if has("b_norm"):
                loaded.add(join(x, "b_norm"))
        if has("diff"):
            patch("diff", ["diff"])
        if has("diff_b"):
            loaded.add(join(x, "diff_b"))  # patches the bias next to the target
        if has("set_weight"):
            patch("set", ["set_weight"])
    applied: dict[str, Patch] = {}
    dropped: dict[str, str] = {}
    for x, target in producers:
        winner = patches[target]
        if winner.module != x:
            dropped[x] = f"overwritten by {winner.module} (same target {target})"
        elif (target if isinstance(target, str) else target[0]) in mkeys:
            applied[x] = winner
        else:
            dropped[x] = f"target {target} is not in the {model_label} model (patch ignored)"
    not_loaded = sorted(k for k in sd if k not in loaded)
    return LoadResult(patches, applied, dropped, not_loaded, fatal)


def _candidates(x: str, sdk: set[str]):
    # cheap probe: the adapter suffixes ComfyUI looks for all start with "." or "_lora."
    for s in (".lora_up.weight", ".alpha", ".hada_w1_a", ".lokr_w1", ".lokr_w2", ".lokr_w1_a", ".lokr_w2_a",
              ".lora_B.weight", ".lora.up.weight", "_lora.up.weight", ".lora_B", ".lora_linear_layer.up.weight",
              ".lora_B.default.weight", ".a1.weight", ".oft_blocks", ".w_norm", ".diff", ".diff_b", ".set_weight",
              ".dora_scale", ".lora_down.weight", ".lora_A.weight"):  # fmt: skip
        if x + s in sdk:
            yield x + s


# ------------------------------------------------------------------------------------------------------------- math
def _lora_diff(t, shape) -> tuple[torch.Tensor, int]:
    """ComfyUI's LoRA rebuild: up.flatten(1) @ down'.flatten(1), down' = down through the Tucker core if any."""
    pair = next(((u, d) for u, d in LORA_PAIRS if u in t and d in t), None)
    if pair is None:
        raise ConsumerMergeError("LoRA module without both up and down tensors")
    up_name, down_name = pair
    up, down = t[up_name].float(), t[down_name].float()
    rank = down.shape[0]
    mid = t.get("lora_mid.weight") if up_name == "lora_up.weight" else None
    if mid is not None:
        mid = mid.float()  # [r_out, r_in, kh, kw]; down [r_in, in, 1, 1]
        down = torch.einsum("oikl,ic->ockl", mid, down.flatten(1))
    diff = up.flatten(1) @ down.flatten(1)
    if diff.numel() != _numel(shape):
        raise ConsumerMergeError(f"cannot reshape ΔW {tuple(diff.shape)} to weight {tuple(shape)}")
    return diff.reshape(shape), rank


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _tucker(t, wb, wa):
    """einsum('i j k l, j r, i p -> p r k l'): core t [r,r,kh,kw], wb [r, in], wa [r, out] -> [out, in, kh, kw]."""
    return torch.einsum("ijkl,jr,ip->prkl", t.float(), wb.float(), wa.float())


def _loha_diff(t, shape) -> tuple[torch.Tensor, int]:
    w1a, w1b, w2a, w2b = (t[k].float() for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"))
    if "hada_t1" in t and "hada_t2" in t:
        m1, m2 = _tucker(t["hada_t1"], w1b, w1a), _tucker(t["hada_t2"], w2b, w2a)
    else:
        if w1b.dim() != 2 or w2b.dim() != 2:
            raise ConsumerMergeError("hada_w?_b must be 2-D without a Tucker core (torch.mm)")
        m1, m2 = w1a @ w1b, w2a @ w2b
    diff = m1 * m2
    if diff.numel() != _numel(shape):
        raise ConsumerMergeError(f"cannot reshape ΔW {tuple(diff.shape)} to weight {tuple(shape)}")
    return diff.reshape(shape), w1b.shape[0]


def _lokr_diff(t, shape) -> tuple[torch.Tensor, int | None]:
    rank = None
    if "lokr_w1" in t:
        w1 = t["lokr_w1"].float()
    elif "lokr_w1_a" in t and "lokr_w1_b" in t:
        rank = t["lokr_w1_b"].shape[0]
        w1 = t["lokr_w1_a"].float() @ t["lokr_w1_b"].float()
    else:
        raise ConsumerMergeError("LoKr without a w1 half")
    if "lokr_w2" in t:
        w2 = t["lokr_w2"].float()
    elif "lokr_w2_a" in t and "lokr_w2_b" in t:
        rank = t["lokr_w2_b"].shape[0]
        if "lokr_t2" in t:
            w2 = _tucker(t["lokr_t2"], t["lokr_w2_b"], t["lokr_w2_a"])
        else:
            w2 = t["lokr_w2_a"].float() @ t["lokr_w2_b"].float()
    else:
        raise ConsumerMergeError("LoKr without a w2 half")
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    diff = torch.kron(w1, w2)
    if diff.numel() != _numel(shape):
        raise ConsumerMergeError(f"cannot reshape ΔW {tuple(diff.shape)} to weight {tuple(shape)}")
    return diff.reshape(shape), rank


def _weight_decompose(W, diff, scale, strength, dora_scale):
    """ComfyUI's DoRA: axis = output iff dora_scale.shape[0] == out; output axis normalises by ‖W‖ (the bug)."""
    m = dora_scale.float()
    merged = W + scale * diff
    if m.shape[0] == W.shape[0]:
        norm = W.reshape(W.shape[0], -1).norm(dim=1, keepdim=True).reshape(W.shape[0], *[1] * (W.dim() - 1))
    else:
        cols = merged.transpose(0, 1).reshape(W.shape[1], -1).norm(dim=1, keepdim=True)
        norm = cols.reshape(W.shape[1], *[1] * (W.dim() - 1)).transpose(0, 1)
    norm = norm + torch.finfo(W.dtype).eps
    try:
        merged = merged * (m / norm)
    except RuntimeError as e:  # e.g. a 1-D dora_scale that does not broadcast
        raise ConsumerMergeError(f"DoRA broadcast failed: {e}") from e
    if merged.shape != W.shape:
        raise ConsumerMergeError(f"DoRA result {tuple(merged.shape)} does not fit weight {tuple(W.shape)}")
    return W + strength * (merged - W) if strength != 1.0 else merged


def merged_weight(W: torch.Tensor, tensors: dict, strength: float = 1.0) -> torch.Tensor:
    """The weight ComfyUI v0.19.3 computes for one module (`tensors`: suffix -> tensor) at LoRA strength `strength`.

    Raises `ConsumerMergeError` where ComfyUI logs an error and leaves the weight unpatched."""
    try:
        return _merged_weight(W.detach().float().clone(), tensors, strength)
    except RuntimeError as e:  # ComfyUI catches it in calculate_weight, logs "ERROR ...", keeps the weight
        raise ConsumerMergeError(f"ComfyUI logs an error and leaves the weight unpatched: {e}") from e


def _merged_weight(W: torch.Tensor, tensors: dict, strength: float) -> torch.Tensor:
    kind = adapter_kind(tensors)
    if kind in ("lora", "locon_tucker"):
        diff, rank = _lora_diff(tensors, W.shape)
    elif kind == "loha":
        diff, rank = _loha_diff(tensors, W.shape)
    elif kind == "lokr":
        diff, rank = _lokr_diff(tensors, W.shape)
    elif kind == "full":
        if "set_weight" in tensors:
            return tensors["set_weight"].float().reshape(W.shape).clone()
        return W + strength * tensors["diff"].float().reshape(W.shape)
    elif kind == "norm":  # w_norm (and b_norm on the bias) are plain diff patches
        return W + strength * tensors["w_norm"].float().reshape(W.shape)
    elif kind == "ia3":
        raise ConsumerMergeError("ComfyUI has no IA3 adapter: every key is logged as 'lora key not loaded'")
    else:
        raise NotImplementedError(f"{kind} merge is recognised but not modelled")
    alpha = tensors.get("alpha")
    if kind == "lokr":
        scale = alpha.item() / rank if alpha is not None and rank is not None else 1.0
    else:
        scale = alpha.item() / rank if alpha is not None else 1.0
    if "dora_scale" in tensors:
        return _weight_decompose(W, diff, scale, strength, tensors["dora_scale"])
    return W + (strength * scale) * diff
