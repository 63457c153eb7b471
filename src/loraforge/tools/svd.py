"""SVD pieces shared by `resize`, `extract` and the SVD LoRA merge: how many singular directions to keep, and the
factors that rebuild a ΔW.

Rank rules (kohya.md §3.1, formats.md §8):

* a fixed `rank` (also the cap of every dynamic rule; `conv_rank` for k×k convolutions);
* `sv_ratio` r: keep σᵢ > σ₁ / r; `sv_cumulative` p: the smallest k with Σσ≤k / Σσ ≥ p; `sv_fro` p: the smallest k with
  √(Σσ²≤k / Σσ²) ≥ p (kohya's resize_lora);
* a resize_lora recipe such as `fro_ckpt=1,thr=-3.55`: score each direction
  `log10(rescale·σᵢ) − Σⱼ wⱼ·log10(Refⱼ)` (weights normalised to sum 1) and keep score > thr, with Ref `spn_ckpt`
  = σ_max(W_base), `fro_ckpt` = ‖W_base‖_F, `spn_lora` = σ₁(ΔW), `fro_lora` = ‖ΔW‖_F, `params` = out + in·k·k.
  `rescale` also scales the written ΔW. (resize_lora's `size=` budget and `subspace` reference are not offered.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import ToolError

METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")
RECIPE_REFS = ("spn_ckpt", "fro_ckpt", "spn_lora", "fro_lora", "params")


@dataclass
class RankRule:
    rank: int | None = None  # fixed rank, or the cap of a dynamic rule
    conv_rank: int | None = None  # the same for k×k convolutions (default: rank)
    method: str | None = None  # sv_ratio / sv_fro / sv_cumulative
    param: float | None = None
    recipe: dict[str, float] = field(default_factory=dict)  # parsed resize_lora recipe

    def __post_init__(self):
        if self.method is not None and self.method not in METHODS:
            raise ToolError(f"unknown rank method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.method and self.param is None:
            raise ToolError(f"{self.method} needs a value (e.g. {self.method}=0.9)")
        if self.method and self.recipe:
            raise ToolError("give a rank method or a recipe, not both")
        for value, what in ((self.rank, "rank"), (self.conv_rank, "conv rank")):
            if value is not None and value < 0:
                raise ToolError(f"{what} must be ≥ 0")

    @property
    def needs_base(self) -> bool:
        return any(self.recipe.get(k) for k in ("spn_ckpt", "fro_ckpt"))

    def describe(self) -> str:
        parts = []
        if self.method:
            parts.append(f"{self.method}={self.param:g}")
        if self.recipe:
            parts.append(",".join(f"{k}={v:g}" for k, v in self.recipe.items()))
        if self.rank is not None:
            parts.append(f"rank{' cap' if parts else ''} {self.rank}")
        if self.conv_rank is not None:
            parts.append(f"conv rank {self.conv_rank}")
        return ", ".join(parts) or "full rank"

    def cap(self, conv: bool) -> int | None:
        return self.conv_rank if conv and self.conv_rank is not None else self.rank


def parse_recipe(text: str) -> dict[str, float]:
    """`fro_ckpt=1,thr=-3.55` -> {"fro_ckpt": 1.0, "thr": -3.55}."""
    out: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if key not in RECIPE_REFS + ("thr", "rescale"):
            hint = " (size budgets are not supported: use thr)" if key == "size" else ""
            raise ToolError(f"recipe {text!r}: unknown key {key!r}{hint}; use {', '.join(RECIPE_REFS)}, thr, rescale")
        try:
            out[key] = float(value) if sep else 1.0
        except ValueError:
            raise ToolError(f"recipe {text!r}: {item!r} is not key=number") from None
    if "thr" not in out:
        raise ToolError(f"recipe {text!r} needs a threshold, e.g. thr=-3.55")
    if not any(out.get(k) for k in RECIPE_REFS):
        raise ToolError(f"recipe {text!r} names no reference ({', '.join(RECIPE_REFS)})")
    return out


def lowrank_svd(up: torch.Tensor, down: torch.Tensor, scale: float = 1.0):
    """SVD of scale·up@down ([out, r] @ [r, in]) without forming it: QR of both factors, SVD of the r×r core."""
    qb, rb = torch.linalg.qr(up.double())
    qa, ra = torch.linalg.qr(down.double().T)
    um, s, vmh = torch.linalg.svd(rb @ ra.T)
    return qb @ um, s * scale, vmh @ qa.T


def full_svd(delta: torch.Tensor):
    """SVD of a 2-D ΔW (float64 for small matrices, float32 above ~4M elements)."""
    mat = delta.double() if delta.numel() <= 4_000_000 else delta.float()
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    return u.double(), s.double(), vh.double()


def fro_share(s: torch.Tensor, k: int) -> float:
    """‖ΔW_k‖_F / ‖ΔW‖_F of the rank-k truncation."""
    total = float((s**2).sum())
    return 1.0 if total == 0 else math.sqrt(float((s[:k] ** 2).sum()) / total)


def select_rank(s: torch.Tensor, rule: RankRule, conv: bool = False, weight: torch.Tensor | None = None,
                shape: tuple | None = None) -> int:
    """How many directions of the singular values `s` (descending) to keep: at least 1, at most len(s)."""
    n = len(s)
    if n == 0 or float(s[0]) <= 1e-12:
        return 1
    k = n
    if rule.method == "sv_ratio":
        k = int((s > s[0] / rule.param).sum())
    elif rule.method == "sv_cumulative":
        k = _first_reaching(torch.cumsum(s, 0) / s.sum(), rule.param)
    elif rule.method == "sv_fro":
        k = _first_reaching(torch.sqrt(torch.cumsum(s**2, 0) / (s**2).sum()), rule.param)
    elif rule.recipe:
        k = int((recipe_scores(s, rule.recipe, weight, shape) > rule.recipe["thr"]).sum())
    cap = rule.cap(conv)
    if cap is not None:
        k = min(k, cap)
    return max(1, min(k, n))


def _first_reaching(curve: torch.Tensor, target: float) -> int:
    hits = (curve >= target - 1e-12).nonzero()
    return int(hits[0]) + 1 if len(hits) else len(curve)


def recipe_scores(s: torch.Tensor, recipe: dict, weight: torch.Tensor | None, shape: tuple | None) -> torch.Tensor:
    weights = {k: recipe.get(k, 0.0) for k in RECIPE_REFS if recipe.get(k)}
    total = sum(weights.values())
    log_ref = 0.0
    for key, w in weights.items():
        if key in ("spn_ckpt", "fro_ckpt"):
            if weight is None:
                raise ToolError(f"recipe reference {key} needs the base model's weights (pass --base)")
            mat = weight.double().flatten(1)
            ref = torch.linalg.matrix_norm(mat, ord=2) if key == "spn_ckpt" else mat.norm()
        elif key == "spn_lora":
            ref = s[0]
        elif key == "fro_lora":
            ref = s.norm()
        else:  # params: the cost of one rank
            ref = torch.tensor(float(shape[0] + math.prod(shape[1:])))
        log_ref += (w / total) * math.log10(max(float(ref), 1e-30))
    rescale = recipe.get("rescale", 1.0)
    return torch.log10((rescale * s).clamp_min(1e-30)) - log_ref


def split_factors(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, k: int, alpha_scale: float = 1.0):
    """(up [out, k], down [k, in]) with up @ down · alpha_scale = U_k S_k V_kᵀ; √S on both sides."""
    root = torch.sqrt(s[:k] / alpha_scale)
    return (u[:, :k] * root).float(), (root[:, None] * vh[:k]).float()


def shape_factors(up: torch.Tensor, down: torch.Tensor, weight_shape: tuple, like_up=None):
    """Reshape 2-D factors for a weight: conv [out, in, kh, kw] -> up [out, k, 1, 1], down [k, in, kh, kw]; a linear
    weight keeps 2-D. `like_up` (the source module's up tensor) keeps a 1×1 conv stored as 2-D that way."""
    k = up.shape[1]
    if len(weight_shape) == 4:
        up_shape = (weight_shape[0], k, 1, 1)
        down_shape = (k, *weight_shape[1:])
        if like_up is not None and like_up.dim() == 2 and weight_shape[2:] == (1, 1):
            up_shape, down_shape = (weight_shape[0], k), (k, weight_shape[1])
        return up.reshape(up_shape).contiguous(), down.reshape(down_shape).contiguous()
    return up.contiguous(), down.contiguous()
