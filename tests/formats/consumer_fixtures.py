"""Fixtures for the consumer-model tests: full-size kohya-named files built from the family shape tables (no model
weights), and small LyCORIS modules whose training forward gives the reference ΔW."""

from __future__ import annotations

import functools
import math

import torch

from loraforge.formats.consumers.tables import family_tables

ALGOS = ("lora", "locon", "locon_tucker", "loha", "lokr", "dora_in", "dora_out")
TE_PREFIXES = {"sd15": {"te": "lora_te"}, "sd2": {"te": "lora_te"}, "sdxl": {"te1": "lora_te1", "te2": "lora_te2"}}
_TE_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


def kohya(prefix: str, path: str) -> str:
    return f"{prefix}_{path}".replace(".", "_")


def unet_targets(family: str, scope: str = "full", naming: str = "diffusers") -> dict[str, tuple[int, ...]]:
    """kohya module name -> full-size weight shape. scope "attn" = every Linear/Conv of the Transformer2D blocks
    (what kohya's LoRA targets); "full" adds res blocks, samplers, conv_in/out, time and add embeddings.
    naming "diffusers" (SD 1.5 kohya, LyCORIS) or "sgm" (kohya SDXL)."""
    t = family_tables(family)
    out = {}
    for name, shape in t.unet_diffusers.items():
        if not name.endswith(".weight") or len(shape) == 1:
            continue
        module = name[: -len(".weight")]
        in_attention = ".attentions." in module and not module.endswith(".norm")
        if scope == "attn" and not in_attention:
            continue
        if "norm" in module.rsplit(".", 1)[-1]:
            continue
        path = t.diffusers_to_ldm[name][: -len(".weight")] if naming == "sgm" else module
        out[kohya("lora_unet", path)] = shape
    return out


def te_targets(family: str, projection: bool = False) -> dict[str, tuple[int, ...]]:
    t = family_tables(family)
    out = {}
    for role, prefix in TE_PREFIXES[family].items():
        for name, shape in t.text_encoders[role].items():
            if name.endswith(".weight") and any(f".{m}." in name for m in _TE_MODULES):
                out[kohya(prefix, name[: -len(".weight")])] = shape
        if projection and "text_projection.weight" in t.text_encoders[role]:
            out[kohya(prefix, "text_projection")] = t.text_encoders[role]["text_projection.weight"]
    return out


def _factor(dim: int) -> tuple[int, int]:
    from lycoris.functional.general import factorization

    return factorization(dim, -1)


def adapter_tensors(algo: str, shape, rank: int = 4, fill=torch.zeros, alpha: float = 2.0) -> dict:
    """Tensors (suffix -> tensor) of one module of `algo` for a weight of `shape`, as LyCORIS lays them out.

    `fill` is torch.zeros for key-level tests (cheap) or torch.randn for math tests."""
    out_dim, in_dim, *k = shape
    conv = bool(k) and any(s != 1 for s in k)
    ones = [1] * len(k)
    t: dict[str, torch.Tensor] = {"alpha": torch.tensor(float(alpha))}
    if algo in ("lora", "locon", "dora_in", "dora_out"):
        t["lora_down.weight"] = fill(rank, in_dim, *k)
        t["lora_up.weight"] = fill(out_dim, rank, *ones)
        if algo == "dora_out":
            t["dora_scale"] = fill(out_dim, 1, *ones).abs() + 1
        elif algo == "dora_in":
            t["dora_scale"] = fill(1, in_dim, *ones).abs() + 1
    elif algo == "locon_tucker":
        t["lora_down.weight"] = fill(rank, in_dim, *ones)
        t["lora_up.weight"] = fill(out_dim, rank, *ones)
        if conv:
            t["lora_mid.weight"] = fill(rank, rank, *k)
        else:
            t["lora_down.weight"] = fill(rank, in_dim, *k)
    elif algo == "loha":
        flat_in = in_dim * math.prod(k) if k else in_dim
        for i in (1, 2):
            t[f"hada_w{i}_a"] = fill(out_dim, rank)
            t[f"hada_w{i}_b"] = fill(rank, flat_in)
    elif algo == "lokr":
        (a, b), (c, d) = _factor(out_dim), _factor(in_dim)
        t["lokr_w1"] = fill(a, c)
        if rank < max(b, d) / 2:
            t["lokr_w2_a"] = fill(b, rank)
            t["lokr_w2_b"] = fill(rank, d * (math.prod(k) if k else 1))
        else:
            t["lokr_w2"] = fill(b, d, *k)
            t["alpha"] = torch.tensor(float(rank))  # both halves full: LyCORIS stores alpha = rank (scale 1)
    else:
        raise ValueError(algo)
    return t


@functools.lru_cache(maxsize=None)
def make_file(family: str, algo: str, *, unet_scope="full", naming="diffusers", te=True, projection=False, rank=4):
    """A full-size kohya file for `family` and `algo`: UNet (+ text encoders); zero factors (only names, shapes and
    alpha = 2 matter to the key-level tests; uninitialised memory may hold NaN, which `check` reports). Cached: do
    not mutate."""
    sd = {}
    targets = dict(unet_targets(family, unet_scope, naming))
    if te:
        targets.update(te_targets(family, projection))
    for module, shape in targets.items():
        a = algo
        if algo == "lora" and len(shape) == 4 and shape[2:] != (1, 1):
            continue  # plain LoRA: Linear and 1x1 conv only
        for suffix, tensor in adapter_tensors(a, shape, rank, fill=torch.zeros).items():
            sd[f"{module}.{suffix}"] = tensor
    return sd


# ---------------------------------------------------------------------------------------- LyCORIS training forward
def lycoris_reference(algo: str, layer: torch.nn.Module, rank: int = 4, alpha: float = 2.0, seed: int = 0, **kw):
    """(module tensors as LyCORIS saves them, ΔW its training forward feeds to the layer's op, the module)."""
    from lycoris.modules.locon import LoConModule
    from lycoris.modules.loha import LohaModule
    from lycoris.modules.lokr import LokrModule

    cls = {"locon": LoConModule, "loha": LohaModule, "lokr": LokrModule}[algo]
    torch.manual_seed(seed)
    module = cls("lora_test", layer, multiplier=1.0, lora_dim=rank, alpha=alpha, bypass_mode=False, **kw)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name != "dora_scale":
                p.copy_(torch.randn_like(p) * (0.3 if p.dim() > 2 else 0.5))
            else:  # a trained magnitude: the initial norms, perturbed
                p.mul_(1 + 0.2 * torch.rand_like(p))
    captured = {}
    op = module.op

    def capture(x, w, *args, **kwargs):
        captured["delta"] = w.detach().clone()
        return op(x, w, *args, **kwargs)

    module.op = capture
    module.apply_to()
    linear = isinstance(layer, torch.nn.Linear)
    x = torch.randn(2, layer.in_features) if linear else torch.randn(1, layer.in_channels, 6, 6)
    with torch.no_grad():
        layer(x)
    tensors = {k: v.detach().clone() for k, v in module.state_dict().items()}
    return tensors, captured["delta"], module


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


class _OldClipNames(torch.nn.Module):
    """transformers 5 flattens CLIPTextModel (no `text_model.`); kohya/A1111 names need the old nesting."""

    def __init__(self, te):
        super().__init__()
        self.text_model = te


def lycoris_file(family: str, algo: str, flatten_te1: bool = False, **kwargs) -> dict:
    """A real LyCORIS kohya-network state dict (preset attn-mlp) on the family's meta-device diffusers models."""
    import lycoris.kohya as lk

    from loraforge.formats.consumers.tables import build_meta_models

    models = build_meta_models(family)
    te1 = models["te1" if family == "sdxl" else "te"]
    te1 = te1 if flatten_te1 else _OldClipNames(te1)
    tes = [te1, models["te2"]] if family == "sdxl" else te1
    net = lk.create_network(1.0, 4, 2.0, None, tes, models["unet"], algo=algo, preset="attn-mlp", **kwargs)
    return {
        f"{m.lora_name}.{k}": v.detach().clone()
        for m in net.unet_loras + net.text_encoder_loras
        for k, v in m.state_dict().items()
    }


# Small real layers the merge-math tests share: a 64x48 linear and a 3x3 conv 16 -> 32.
LIN = torch.nn.Linear(48, 64)
CONV = torch.nn.Conv2d(16, 32, 3, padding=1)
DORA_IN = {"weight_decompose": True, "wd_on_out": False}
DORA_OUT = {"weight_decompose": True, "wd_on_out": True}
