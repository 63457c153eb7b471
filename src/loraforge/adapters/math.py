"""ΔW of one adapter module, and DoRA: the one copy training, export, the file reader and the tools use.

ΔW at strength 1, scale included (formats.md §4):

* LoRA / LoCon: `alpha/rank · up.flatten(1) @ down.flatten(1)`; Tucker (`lora_mid`): the down side goes through the
  core first;
* LoHa: `alpha/rank · (w1_a @ w1_b) ⊙ (w2_a @ w2_b)`, each half through its Tucker core when `hada_t1/t2` exist;
* LoKr: `kron(w1, w2)` with each half full or factored (`_a @ _b`, `lokr_t2` Tucker), scaled by alpha/rank only when
  a half is factored (rank = the factored half's inner size; LyCORIS stores alpha = rank otherwise);
* full (`diff`) and norm layers (`w_norm`): the stored difference;
* DoRA (`dora_scale`, any of the above): `W' = (W + ΔW)·m/‖W + ΔW‖` along the stored axis (`[out,1,...]`: per output
  row, as LyCORIS ≥ 3.2 trains; `[1,in,...]`: per input column; PEFT's 1-D magnitude: per output row), so the
  update is `W' − W`; strength s gives `W + s·(W' − W)`.

Why not `lycoris.functional`: its per-algorithm `diff_weight` signatures take the scale in different forms (LoKr takes
alpha and derives the rank itself, the others take alpha/rank) and dispatch to optional kernels; the half-page below
is checked in the tests against the LyCORIS training forward, `lycoris.functional`, and the ComfyUI / A1111 models
(`formats.check.consumer_merged_delta`), which keep their own math on purpose.
"""

from __future__ import annotations

import torch

from ..errors import ShapeMismatchError, UnsupportedError
from .module import AdapterModule

EPS = torch.finfo(torch.float32).eps


def tucker(core: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """core [r, r, kh, kw], down [r, in], up [r, out] -> [out, in, kh, kw]."""
    return torch.einsum("ijkl,jr,ip->prkl", core.float(), down.float(), up.float()).contiguous()


def raw_delta(m: AdapterModule) -> torch.Tensor:
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
            w1 = tucker(t["hada_t1"], t["hada_w1_b"], t["hada_w1_a"])
            w2 = tucker(t["hada_t2"], t["hada_w2_b"], t["hada_w2_a"])
        else:
            w1 = t["hada_w1_a"].float() @ t["hada_w1_b"].float().flatten(1)
            w2 = t["hada_w2_a"].float() @ t["hada_w2_b"].float().flatten(1)
        return w1 * w2
    if kind == "lokr":
        w1 = t["lokr_w1"].float() if "lokr_w1" in t else t["lokr_w1_a"].float() @ t["lokr_w1_b"].float()
        if "lokr_w2" in t:
            w2 = t["lokr_w2"].float()
        elif "lokr_t2" in t:
            w2 = tucker(t["lokr_t2"], t["lokr_w2_b"], t["lokr_w2_a"])
        else:
            w2 = t["lokr_w2_a"].float() @ t["lokr_w2_b"].float()
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        return torch.kron(w1, w2.contiguous())
    if kind == "full":
        return t["diff"].float()
    if kind == "norm":
        return t["w_norm"].float()
    raise UnsupportedError(f"{m.name or m.path}: cannot compute the update of a {kind} module")


def module_delta(m: AdapterModule, weight_shape, weight: torch.Tensor | None = None) -> torch.Tensor:
    """ΔW of `m` at strength 1, float32, shaped like the weight. `weight` (the base W) is needed for DoRA."""
    shape = tuple(weight_shape)
    diff = raw_delta(m)
    if diff.numel() != _numel(shape):
        raise ShapeMismatchError(f"{m.name or m.path}: ΔW {tuple(diff.shape)} does not fit weight {shape}")
    delta = diff.reshape(shape) * m.scale
    dora = m.tensors.get("dora_scale")
    if dora is None:
        return delta
    if weight is None:
        raise UnsupportedError(f"{m.name or m.path}: DoRA needs the base weight (pass the base model)")
    W = weight.detach().float()
    return dora_weight(W + delta.to(W.device), dora.to(W.device)) - W


def axis_norm(weight: torch.Tensor, axis: str) -> torch.Tensor:
    """‖W‖ per output row ([out, 1, ...], axis "output") or per input column ([1, in, ...], "input"), keep-dim."""
    ones = [1] * (weight.dim() - 1)
    if axis == "output":
        return weight.reshape(weight.shape[0], -1).norm(dim=1).reshape(weight.shape[0], *ones)
    cols = weight.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1)
    return cols.reshape(weight.shape[1], *ones).transpose(0, 1)


def magnitude_axis(magnitude: torch.Tensor, weight_shape) -> str:
    """The axis a stored `dora_scale` is for: "output" ([out, 1, ...] or PEFT's 1-D [out]) or "input" ([1, in, ...])."""
    shape = tuple(weight_shape)
    if magnitude.dim() == 1 or (magnitude.shape[0] == shape[0] and magnitude.numel() == shape[0]):
        return "output"
    if magnitude.numel() == shape[1]:
        return "input"
    raise ShapeMismatchError(f"dora_scale {tuple(magnitude.shape)} fits neither axis of weight {shape}")


def dora_weight(merged: torch.Tensor, magnitude: torch.Tensor, axis: str | None = None) -> torch.Tensor:
    """`merged · m / (‖merged‖ + eps)` along `axis` (by default the one `magnitude` is stored for): the DoRA weight
    of an already merged W + ΔW (LyCORIS' formula at multiplier 1)."""
    axis = axis or magnitude_axis(magnitude, merged.shape)
    ones = [1] * (merged.dim() - 1)
    if axis == "output":
        m = magnitude.float().reshape(merged.shape[0], *ones)
    else:
        m = magnitude.float().reshape(1, merged.shape[1], *ones[1:])
    return merged * (m / (axis_norm(merged, axis) + EPS))


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
