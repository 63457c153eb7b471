"""One adapted module, as every part of loraforge sees it: the trainer's export, the writers, the file reader and the
tools.

A module is its tensors by suffix in the kohya / LyCORIS spelling (formats.md §3) plus the alpha consumers divide by
the rank:

* LoRA / LoCon: `lora_down.weight`, `lora_up.weight` (+ `lora_mid.weight`, a Tucker core);
* LoHa: `hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b` (+ `hada_t1`, `hada_t2`);
* LoKr: `lokr_w1` or `lokr_w1_a` + `lokr_w1_b`, `lokr_w2` or `lokr_w2_a` + `lokr_w2_b` (+ `lokr_t2`);
* full: `diff`; norm layers: `w_norm` (+ `b_norm`), no alpha;
* DoRA (any of the factored kinds): keep-dim `dora_scale` ([out, 1, ...] or [1, in, ...]; PEFT's 1-D magnitude read
  from a file: per output row).

Other layouts (PEFT's `lora_A` / `lora_B`, diffusers' `lora.down`, ...) are turned into this spelling by the file
reader (`formats.lora_keys`); kinds loraforge does not compute (GLoRA, OFT, IA3) keep their own suffixes so they can
be named.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

LORA = ("lora_down.weight", "lora_up.weight")
LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t1", "lokr_t2")

# what each kind needs (LoKr: one of each alternative, see `missing_tensors`)
REQUIRED = {
    "lora": LORA,
    "locon_tucker": LORA + ("lora_mid.weight",),
    "loha": LOHA,
    "full": ("diff",),
    "norm": ("w_norm",),
}
COMPUTED_KINDS = ("lora", "locon_tucker", "loha", "lokr", "full", "norm")  # the kinds `adapters.math` computes

ADAPTER_LABELS = {
    "lora": "LoRA",
    "locon_tucker": "LoCon+Tucker",
    "loha": "LoHa",
    "lokr": "LoKr",
    "glora": "GLoRA",
    "oft": "OFT",
    "boft": "BOFT",
    "ia3": "IA3",
    "full": "full diff",
    "norm": "norm",
    "none": "no adapter",
}


def adapter_kind(tensors) -> str:
    """lora, locon_tucker, loha, lokr, glora, oft, boft, ia3, full, norm, or "none" (alpha / dora_scale alone), from
    the suffixes of a module in the kohya / LyCORIS spelling."""
    if any(k in tensors for k in LOHA):
        return "loha"
    if any(k in tensors for k in LOKR):
        return "lokr"
    if "a1.weight" in tensors:
        return "glora"
    if "oft_blocks" in tensors or "oft_diag" in tensors:
        blocks = tensors.get("oft_blocks")
        return "boft" if blocks is not None and blocks.dim() == 4 else "oft"
    if any(k in tensors for k in LORA):
        return "locon_tucker" if "lora_mid.weight" in tensors else "lora"
    if "diff" in tensors:
        return "full"
    if "w_norm" in tensors:
        return "norm"
    if "weight" in tensors:
        return "ia3"
    return "none"


def missing_tensors(tensors) -> list[str]:
    """The tensors a module of its kind lacks to be computed (empty when complete)."""
    kind = adapter_kind(tensors)
    missing = [s for s in REQUIRED.get(kind, ()) if s not in tensors]
    if kind == "lokr":
        if "lokr_w1" not in tensors and not {"lokr_w1_a", "lokr_w1_b"} <= set(tensors):
            missing.append("lokr_w1 (or lokr_w1_a + lokr_w1_b)")
        if "lokr_w2" not in tensors and not {"lokr_w2_a", "lokr_w2_b"} <= set(tensors):
            missing.append("lokr_w2 (or lokr_w2_a + lokr_w2_b)")
    if kind == "loha" and ("hada_t1" in tensors) != ("hada_t2" in tensors):
        missing.append("hada_t1 and hada_t2 together")
    return missing


def module_rank(tensors) -> int | None:
    """The rank consumers divide alpha by: the inner size of the factored product (LoKr: of the factored half, none
    when both halves are full; ComfyUI's and LyCORIS' rule)."""
    kind = adapter_kind(tensors)
    if kind in ("lora", "locon_tucker") and "lora_down.weight" in tensors:
        return int(tensors["lora_down.weight"].shape[0])
    if kind == "loha" and "hada_w1_b" in tensors:
        return int(tensors["hada_w1_b"].shape[0])
    if kind == "lokr":
        for key in ("lokr_w2_b", "lokr_w1_b"):
            if key in tensors:
                return int(tensors[key].shape[0])
    return None


def _prod(values) -> int:
    n = 1
    for v in values:
        n *= int(v)
    return n


def delta_shape(tensors) -> tuple[int, int] | None:
    """(out, in·kh·kw) of the ΔW a module rebuilds to, from shapes only; None when it cannot be computed."""
    t = tensors
    try:
        kind = adapter_kind(t)
        if kind in ("lora", "locon_tucker"):
            up, down, mid = t["lora_up.weight"].shape, t["lora_down.weight"].shape, t.get("lora_mid.weight")
            return up[0], down[1] * _prod(mid.shape[2:]) if mid is not None else _prod(down[1:])
        if kind == "loha":
            a, b = t["hada_w1_a"].shape, t["hada_w1_b"].shape
            if "hada_t1" in t:  # Tucker: w?_a [r, out], w?_b [r, in]
                return a[1], b[1] * _prod(t["hada_t1"].shape[2:])
            return a[0], _prod(b[1:])
        if kind == "lokr":
            w1 = t.get("lokr_w1")
            a, c = w1.shape if w1 is not None else (t["lokr_w1_a"].shape[0], t["lokr_w1_b"].shape[1])
            w2 = t.get("lokr_w2")
            if w2 is not None:
                b, d = w2.shape[0], _prod(w2.shape[1:])
            elif "lokr_t2" in t:  # Tucker: w2_a [r, b], w2_b [r, d]
                b, d = t["lokr_w2_a"].shape[1], t["lokr_w2_b"].shape[1] * _prod(t["lokr_t2"].shape[2:])
            else:
                b, d = t["lokr_w2_a"].shape[0], _prod(t["lokr_w2_b"].shape[1:])
            return a * b, c * d
        if kind == "full":
            s = t["diff"].shape
            return s[0], _prod(s[1:])
    except (KeyError, IndexError, ValueError):
        return None
    return None


@dataclass
class AdapterModule:
    """One adapted module: tensors by suffix (kohya / LyCORIS spelling, see the module docstring), the alpha consumers
    divide by the rank (alpha·√rank for rsLoRA; None for modules without one, e.g. norm diffs), and once bound to a
    model, the (part, path) it patches (`unet` / `te1` / `te2`, the diffusers / transformers module path)."""

    name: str  # the module name in a file ("" for modules made in memory)
    tensors: dict[str, torch.Tensor]
    alpha: float | None = None
    alpha_tensor: torch.Tensor | None = None  # as stored in a file (dtype kept for bit-exact rewrites)
    part: str | None = None
    path: str | None = None
    keys: list[str] = field(default_factory=list)  # the file keys it was read from

    @property
    def kind(self) -> str:
        return adapter_kind(self.tensors)

    @property
    def rank(self) -> int | None:
        return module_rank(self.tensors)

    @property
    def scale(self) -> float:
        """alpha / rank, the factor every consumer applies (1.0 without alpha, and for LoKr without a factored
        half)."""
        rank = self.rank
        if self.alpha is None or rank is None:
            return 1.0
        return self.alpha / rank

    @property
    def is_conv(self) -> bool:
        t = self.tensors
        return any(v.dim() == 4 and v.shape[2:] != (1, 1) for v in t.values()) or "lora_mid.weight" in t

    @property
    def target(self) -> tuple[str, str] | None:
        return (self.part, self.path) if self.part else None
