"""The weight update ΔW of one LoRA-family module, and patching a model with any number of LoRA files.

ΔW at strength 1, scale included (formats.md §4):

* LoRA / LoCon: `alpha/rank · up.flatten(1) @ down.flatten(1)`; Tucker (`lora_mid`): the down side goes through the
  core first;
* LoHa: `alpha/rank · (w1_a @ w1_b) ⊙ (w2_a @ w2_b)`, each half through its Tucker core when `hada_t1/t2` exist;
* LoKr: `kron(w1, w2)` with each half full or factored (`_a @ _b`, `lokr_t2` Tucker), scaled by alpha/rank only when
  a half is factored (rank = the factored half's inner size; LyCORIS stores alpha = rank otherwise);
* full (`diff`): the stored difference;
* DoRA (`dora_scale`, any of the above): `W' = (W + ΔW)·m/‖W + ΔW‖` along the stored axis (`[out,1,...]`: per output
  row, as LyCORIS ≥ 3.2 trains; `[1,in,...]`: per input column; PEFT's 1-D magnitude: per output row), so the
  update is `W' − W`; strength s gives `W + s·(W' − W)`.

Why not `lycoris.functional`: its per-algorithm `diff_weight` signatures take the scale in different forms (LoKr takes
alpha and derives the rank itself, the others take alpha/rank) and dispatch to optional kernels; the half-page below
is checked in the tests against both the LyCORIS training forward and the ComfyUI model
(`formats.check.consumer_merged_delta`).
"""

from __future__ import annotations

import torch

from ..tools.errors import ShapeMismatchError, UnsupportedError
from .lora_file import LoraFile, LoraModule


def _tucker(core: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """core [r, r, kh, kw], down [r, in], up [r, out] -> [out, in, kh, kw]."""
    return torch.einsum("ijkl,jr,ip->prkl", core.float(), down.float(), up.float()).contiguous()


def raw_delta(m: LoraModule) -> torch.Tensor:
    """The module's product before scaling and DoRA, in the module's own layout ([out, in(, kh, kw)] or flat)."""
    t, kind = m.tensors, m.kind
    if kind in ("lora", "locon_tucker"):
        up, down = t["lora_up.weight"].float(), t["lora_down.weight"].float()
        mid = t.get("lora_mid.weight")
        if mid is not None:  # down [r, in, 1, 1] through the core [r, r, kh, kw]
            down = torch.einsum("oikl,ic->ockl", mid.float(), down.flatten(1))
        return up.flatten(1) @ down.flatten(1)
    if kind == "loha":
        if "hada_t1" in t:
            w1 = _tucker(t["hada_t1"], t["hada_w1_b"], t["hada_w1_a"])
            w2 = _tucker(t["hada_t2"], t["hada_w2_b"], t["hada_w2_a"])
        else:
            w1 = t["hada_w1_a"].float() @ t["hada_w1_b"].float().flatten(1)
            w2 = t["hada_w2_a"].float() @ t["hada_w2_b"].float().flatten(1)
        return w1 * w2
    if kind == "lokr":
        w1 = t["lokr_w1"].float() if "lokr_w1" in t else t["lokr_w1_a"].float() @ t["lokr_w1_b"].float()
        if "lokr_w2" in t:
            w2 = t["lokr_w2"].float()
        elif "lokr_t2" in t:
            w2 = _tucker(t["lokr_t2"], t["lokr_w2_b"], t["lokr_w2_a"])
        else:
            w2 = t["lokr_w2_a"].float() @ t["lokr_w2_b"].float()
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        return torch.kron(w1, w2)
    if kind == "full":
        return t["diff"].float()
    raise UnsupportedError(f"{m.name}: cannot compute the update of a {kind} module")


def module_delta(m: LoraModule, weight_shape, weight: torch.Tensor | None = None) -> torch.Tensor:
    """ΔW of `m` at strength 1, float32, shaped like the weight. `weight` (the base W) is needed for DoRA."""
    shape = tuple(weight_shape)
    diff = raw_delta(m)
    if diff.numel() != _numel(shape):
        raise ShapeMismatchError(f"{m.name}: ΔW {tuple(diff.shape)} does not fit weight {shape}")
    delta = diff.reshape(shape) * m.scale
    dora = m.tensors.get("dora_scale")
    if dora is None:
        return delta
    if weight is None:
        raise UnsupportedError(f"{m.name}: DoRA needs the base weight (pass the base model)")
    W = weight.detach().float()
    return dora_weight(W, W + delta, dora) - W


def dora_weight(W: torch.Tensor, merged: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """`merged · m / ‖merged‖` along the axis `magnitude` is stored for."""
    m = magnitude.float()
    ones = [1] * (W.dim() - 1)
    eps = torch.finfo(torch.float32).eps
    if m.dim() == 1 or (m.shape[0] == W.shape[0] and m.numel() == W.shape[0]):
        m = m.reshape(W.shape[0], *ones)
        norm = merged.flatten(1).norm(dim=1).reshape(W.shape[0], *ones)
    elif m.numel() == W.shape[1]:
        m = m.reshape(1, W.shape[1], *ones[1:])
        norm = merged.transpose(0, 1).reshape(W.shape[1], -1).norm(dim=1).reshape(1, W.shape[1], *ones[1:])
    else:
        raise ShapeMismatchError(f"dora_scale {tuple(magnitude.shape)} fits neither axis of weight {tuple(W.shape)}")
    return merged * (m / (norm + eps))


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def part_scale(part: str, unet_scale: float, te_scale: float) -> float:
    return unet_scale if part == "unet" else te_scale


def apply_loras(parts: dict, loras: list[tuple[LoraFile, float, float]]) -> int:
    """Patch the weights of `parts` ({"unet": unet, "te1": text_encoder, ...}) in place: W += Σ sᵢ·ΔWᵢ, every ΔW
    computed against the unpatched W (so the order of the files does not matter, DoRA included). Each entry is
    (bound LoraFile, UNet scale, text-encoder scale). Returns the number of weights changed."""
    updates: dict[tuple[str, str], list[tuple[LoraModule, float]]] = {}
    for lora, unet_scale, te_scale in loras:
        for target, module in lora.by_target().items():
            scale = part_scale(target[0], unet_scale, te_scale)
            if scale != 0.0:
                updates.setdefault(target, []).append((module, scale))
    with torch.no_grad():
        for (part, path), items in updates.items():
            weight = parts[part].get_submodule(path).weight
            base = weight.detach().float()
            total = torch.zeros_like(base)
            for module, scale in items:
                total += scale * module_delta(module, base.shape, base)
            weight.copy_((base + total).to(weight.dtype))
    return len(updates)
