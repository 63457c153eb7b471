"""FLUX.1's transformer under its two sets of names: the original (Black Forest Labs) names of `flux1-dev.safetensors`,
ComfyUI and kohya files (`double_blocks.N.img_attn.qkv`, `single_blocks.N.linear1`, `final_layer.adaLN_modulation.1`)
and diffusers' `FluxTransformer2DModel` names (`transformer_blocks.N.attn.to_q`, `single_transformer_blocks.N.proj_mlp`,
`norm_out.linear`), derived from the transformer config (block counts, widths), never listed per block.

The original model fuses layers diffusers keeps apart: a double block's `img_attn.qkv` is `attn.to_q | to_k | to_v`
stacked along the output rows, `txt_attn.qkv` is `attn.add_q_proj | add_k_proj | add_v_proj`, and a single block's
`linear1` is `attn.to_q | to_k | to_v | proj_mlp`. Each original module is therefore a list of (diffusers module,
first output row, rows). One module also re-orders its rows: the final layer's modulation `final_layer.adaLN_modulation.1`
yields (shift, scale), diffusers' `norm_out.linear` (scale, shift), so the two halves of its rows swap.

Also here: `FLUX_FILE_FACTS`, the registry's FLUX facts in the shape the LoRA file formats use.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from .architectures import COMPONENTS
from .registry import FAMILIES

FLUX = "flux"  # the family's name
MLP_RATIO = 4  # diffusers' FluxTransformer2DModel and BFL's Flux both use an MLP 4x the hidden width
# Key prefixes of an original-layout transformer: ComfyUI's files and all-in-one checkpoints, bare in BFL's own file
TRANSFORMER_PREFIXES = ("model.diffusion_model.", "diffusion_model.")

# ------------------------------------------------------------------------------------------------- the FLUX facts
# The facts the file formats use, read from the registry's Family("flux") (one source of truth); only the [schnell]
# modelspec name is a variant fact kept here.
_FAMILY = FAMILIES[FLUX]
FLUX_FILE_FACTS: dict[str, Any] = {
    "label": _FAMILY.label,
    "denoiser_prefix": _FAMILY.denoiser,  # diffusers / PEFT prefix and pipeline attribute of the denoiser ("unet" part)
    # text-encoder part -> (diffusers prefix, kohya prefixes: the first is written, the others are read)
    "text_encoders": {te.part: (te.diffusers, te.kohya_prefixes) for te in _FAMILY.text_encoders},
    "base_model_version": _FAMILY.base_model_version,  # ss_base_model_version
    "modelspec_architecture": {True: _FAMILY.modelspec_architecture, False: "flux-1-schnell"},  # by guidance_embeds
    "modelspec_implementation": _FAMILY.modelspec_implementation,
}


def flux_components() -> dict[str, dict[str, Any]]:
    """The full-size FLUX.1 [dev] component configs (`architectures.COMPONENTS["flux"]`)."""
    return COMPONENTS[FLUX]


@dataclass(frozen=True)
class FusedModule:
    """One original (BFL) Linear module and the diffusers modules its output rows hold."""

    original: str  # "double_blocks.0.img_attn.qkv"
    parts: tuple[tuple[str, int, int], ...]  # (diffusers module, first output row, rows), in row order
    swap_halves: bool = False  # rows are (shift, scale) here and (scale, shift) in diffusers

    @property
    def rows(self) -> int:
        return sum(size for _, _, size in self.parts)

    @property
    def fused(self) -> bool:
        return len(self.parts) > 1


@dataclass(frozen=True)
class FluxLayout:
    """The sizes of a FLUX transformer that its weight names depend on."""

    double_blocks: int
    single_blocks: int
    inner: int  # attention width = heads x head dim (3072)
    mlp: int  # MLP hidden width (12288)
    guidance: bool  # [dev] has a guidance embedding, [schnell] not
    out: int  # output features of the final projection: patch size² x output channels (64)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "FluxLayout":
        inner = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
        patch = int(config.get("patch_size", 1))
        channels = int(config.get("out_channels") or config["in_channels"])
        return cls(int(config["num_layers"]), int(config["num_single_layers"]), inner, inner * MLP_RATIO,
                   bool(config.get("guidance_embeds", True)), patch * patch * channels)


def _layout(config: dict[str, Any] | FluxLayout | None) -> FluxLayout:
    if isinstance(config, FluxLayout):
        return config
    return FluxLayout.from_config(config if config is not None else flux_components()["transformer"])


# One-to-one modules: original module suffix -> (diffusers module suffix, output rows in units of the widths:
# "inner", "mlp", "out", or a multiple of "inner" such as 6 for the six modulation vectors of a double block).
_DOUBLE = {
    "img_mod.lin": ("norm1.linear", 6),
    "img_attn.proj": ("attn.to_out.0", 1),
    "img_mlp.0": ("ff.net.0.proj", "mlp"),
    "img_mlp.2": ("ff.net.2", 1),
    "txt_mod.lin": ("norm1_context.linear", 6),
    "txt_attn.proj": ("attn.to_add_out", 1),
    "txt_mlp.0": ("ff_context.net.0.proj", "mlp"),
    "txt_mlp.2": ("ff_context.net.2", 1),
}
_SINGLE = {"linear2": ("proj_out", 1), "modulation.lin": ("norm.linear", 3)}
_EMBEDDERS = {
    "img_in": ("x_embedder", 1),
    "txt_in": ("context_embedder", 1),
    "time_in.in_layer": ("time_text_embed.timestep_embedder.linear_1", 1),
    "time_in.out_layer": ("time_text_embed.timestep_embedder.linear_2", 1),
    "vector_in.in_layer": ("time_text_embed.text_embedder.linear_1", 1),
    "vector_in.out_layer": ("time_text_embed.text_embedder.linear_2", 1),
    "final_layer.linear": ("proj_out", "out"),
}
_GUIDANCE = {
    "guidance_in.in_layer": ("time_text_embed.guidance_embedder.linear_1", 1),
    "guidance_in.out_layer": ("time_text_embed.guidance_embedder.linear_2", 1),
}
# RMS norms of q and k: original `<...>.scale` <-> diffusers `<...>.weight`
_DOUBLE_NORMS = {
    "img_attn.norm.query_norm": "attn.norm_q",
    "img_attn.norm.key_norm": "attn.norm_k",
    "txt_attn.norm.query_norm": "attn.norm_added_q",
    "txt_attn.norm.key_norm": "attn.norm_added_k",
}
_SINGLE_NORMS = {"norm.query_norm": "attn.norm_q", "norm.key_norm": "attn.norm_k"}


def _stack(original: str, names: list[str], sizes: list[int]) -> FusedModule:
    parts, row = [], 0
    for name, size in zip(names, sizes):
        parts.append((name, row, size))
        row += size
    return FusedModule(original, tuple(parts))


@functools.lru_cache(maxsize=8)
def _modules(layout: FluxLayout) -> dict[str, FusedModule]:
    inner, mlp = layout.inner, layout.mlp
    out: dict[str, FusedModule] = {}

    def one(original: str, diffusers: str, rows: int | str, swap: bool = False) -> None:
        size = {"mlp": mlp, "out": layout.out}[rows] if isinstance(rows, str) else rows * inner
        out[original] = FusedModule(original, ((diffusers, 0, size),), swap)

    embedders = dict(_EMBEDDERS, **(_GUIDANCE if layout.guidance else {}))
    for original, (diffusers, rows) in embedders.items():
        one(original, diffusers, rows)
    one("final_layer.adaLN_modulation.1", "norm_out.linear", 2, swap=True)
    for i in range(layout.double_blocks):
        o, d = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        out[o + "img_attn.qkv"] = _stack(o + "img_attn.qkv", [d + f"attn.to_{x}" for x in "qkv"], [inner] * 3)
        out[o + "txt_attn.qkv"] = _stack(o + "txt_attn.qkv", [d + f"attn.add_{x}_proj" for x in "qkv"], [inner] * 3)
        for suffix, (target, rows) in _DOUBLE.items():
            one(o + suffix, d + target, rows)
    for i in range(layout.single_blocks):
        o, d = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        out[o + "linear1"] = _stack(o + "linear1", [d + f"attn.to_{x}" for x in "qkv"] + [d + "proj_mlp"],
                                    [inner] * 3 + [mlp])
        for suffix, (target, rows) in _SINGLE.items():
            one(o + suffix, d + target, rows)
    return out


def transformer_modules(config: dict[str, Any] | FluxLayout | None = None) -> dict[str, FusedModule]:
    """Original Linear module name -> `FusedModule`, for every Linear layer of the transformer (`config`: a diffusers
    `FluxTransformer2DModel` config; None: the full-size [dev] one)."""
    return _modules(_layout(config))


@functools.lru_cache(maxsize=8)
def _diffusers_index(layout: FluxLayout) -> dict[str, tuple[FusedModule, int]]:
    return {name: (m, i) for m in _modules(layout).values() for i, (name, _, _) in enumerate(m.parts)}


def diffusers_module_origin(
    name: str, config: dict[str, Any] | FluxLayout | None = None
) -> tuple[FusedModule, int] | None:
    """(the original module holding diffusers Linear module `name`, index of its part), or None."""
    return _diffusers_index(_layout(config)).get(name)


def norm_modules(config: dict[str, Any] | FluxLayout | None = None) -> dict[str, str]:
    """Original RMS-norm module -> diffusers module (their one weight: `.scale` there, `.weight` here)."""
    layout = _layout(config)
    out = {}
    for i in range(layout.double_blocks):
        out.update({f"double_blocks.{i}.{o}": f"transformer_blocks.{i}.{d}" for o, d in _DOUBLE_NORMS.items()})
    for i in range(layout.single_blocks):
        out.update({f"single_blocks.{i}.{o}": f"single_transformer_blocks.{i}.{d}" for o, d in _SINGLE_NORMS.items()})
    return out


def swap_halves(t):
    """(a, b) -> (b, a) along the first axis: the final layer's (shift, scale) <-> diffusers' (scale, shift)."""
    return t.roll(t.shape[0] // 2, dims=0)


# --------------------------------------------------------------------------------------------- whole state dicts
def strip_prefix(sd: dict) -> tuple[dict, str]:
    """(the transformer's keys without prefix, the prefix found: "" when the keys are bare)."""
    for prefix in TRANSFORMER_PREFIXES:
        if any(k.startswith(prefix) for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, prefix
    return dict(sd), ""


def original_to_diffusers(sd: dict, config: dict[str, Any] | FluxLayout | None = None) -> tuple[dict, list[str]]:
    """(diffusers state dict, original keys that are not transformer weights) of an original (BFL) transformer
    state dict without prefix: fused weights and biases are split by rows, the final modulation's halves swapped,
    norm `scale`s renamed `weight`."""
    layout = _layout(config)
    norms = norm_modules(layout)
    out, unused = {}, []
    for key, value in sd.items():
        module, _, param = key.rpartition(".")
        fused = _modules(layout).get(module)
        if fused is not None and param in ("weight", "bias"):
            value = swap_halves(value) if fused.swap_halves else value
            for name, start, size in fused.parts:
                out[f"{name}.{param}"] = value[start:start + size] if fused.fused else value
        elif module in norms and param == "scale":
            out[f"{norms[module]}.weight"] = value
        else:
            unused.append(key)
    return out, unused


def diffusers_to_original(sd: dict, config: dict[str, Any] | FluxLayout | None = None) -> tuple[dict, list[str]]:
    """(original state dict, diffusers keys that are not transformer weights): the inverse of `original_to_diffusers`
    (fused weights are concatenated along the rows; a fused weight with a part missing is left out and its parts
    reported)."""
    import torch  # lazy: this leaf package imports no torch

    layout = _layout(config)
    norms = {d: o for o, d in norm_modules(layout).items()}
    out, unused = {}, []
    for key in sd:
        module, _, param = key.rpartition(".")
        if module in norms and param == "weight":
            out[f"{norms[module]}.scale"] = sd[key]
        elif diffusers_module_origin(module, layout) is None or param not in ("weight", "bias"):
            unused.append(key)
    for fused in _modules(layout).values():
        for param in ("weight", "bias"):
            keys = [f"{name}.{param}" for name, _, _ in fused.parts]
            have = [k for k in keys if k in sd]
            if not have:
                continue
            if len(have) < len(keys):
                unused.extend(have)
                continue
            value = torch.cat([sd[k] for k in keys]) if fused.fused else sd[keys[0]]
            out[f"{fused.original}.{param}"] = swap_halves(value) if fused.swap_halves else value
    return out, unused
