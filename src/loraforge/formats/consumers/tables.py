"""Weight tables of SD 1.5, SD 2.1 and SDXL base (full size) or of an actual model's architecture, and the
LDM <-> diffusers UNet name derivation.

An actual model (the tiny test models, a fine-tune with another depth) is described by its diffusers UNet config and
text-encoder configs: `model_tables_key(family, unet_config, te_configs)` returns it as a `ModelArchitecture`, which
every function below and the consumer models accept in place of a family name. ComfyUI's
`unet_config` is then derived from the diffusers config (`comfy_unet_config`), as ComfyUI derives it from the
checkpoint it loads.

The consumer models need the full-size weight names and shapes of each family, but never the weights. The
architectures are the family registry's (`loraforge.families`: a fact, not a consumer rule); the tables are derived
once per process from the real diffusers / transformers classes instantiated on the meta device (no memory,
about a second per family) and cached. Names are kept in three spellings:

* diffusers / transformers names (what the trainer and diffusers' loader see),
* LDM ("compvis", "SGM") UNet names as ComfyUI and A1111 hold them (`input_blocks.4.1.proj_in`),
* per-consumer text-encoder names (ComfyUI `clip_l.transformer.text_model...`, A1111 `transformer.text_model...` or
  OpenCLIP `model.transformer.resblocks.N...`).

`unet_to_diffusers` is a clean-room re-derivation of the mapping ComfyUI v0.19.3 builds from a ComfyUI-style
`unet_config` (`comfy.utils.unet_to_diffusers`): it enumerates, per block, the diffusers parameter names and the LDM
names they live under. Like ComfyUI it also produces entries for blocks the model does not have (SD 1.x's
`down_blocks.3.downsamplers`, the last up block's upsampler, `class_embedding`), which is why consumers check the
target exists.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from ...errors import FamilyMismatchError
from ...families import FAMILY_NAMES as FAMILIES
from ...families import ModelArchitecture
from ...families import family as family_info

Shape = tuple[int, ...]

# ComfyUI-style unet_config per family (comfy/model_detection.py). transformer_depth: per input res block, in order;
# transformer_depth_output: per output block, consumed from the END (the last entry belongs to output_blocks.0).
UNET_CONFIGS: dict[str, dict] = {
    "sd15": {
        "num_res_blocks": [2, 2, 2, 2],
        "channel_mult": [1, 2, 4, 4],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "transformer_depth_middle": 1,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    },
    "sdxl": {
        "num_res_blocks": [2, 2, 2],
        "channel_mult": [1, 2, 4],
        "transformer_depth": [0, 0, 2, 2, 10, 10],
        "transformer_depth_middle": 10,
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    },
}
UNET_CONFIGS["sd2"] = dict(UNET_CONFIGS["sd15"])

# The single-file checkpoints ComfyUI and A1111 load keep all 24 OpenCLIP-H layers (SD 2.x uses the penultimate one);
# diffusers' SD 2.x text encoder drops the last one.
CONSUMER_TE_LAYERS = {"sd15": {"te": 12}, "sd2": {"te": 24}, "sdxl": {"te1": 12, "te2": 32}}

_RESNET = {  # LDM suffix -> diffusers suffix inside a res block
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_ATTENTION = ("norm", "proj_in", "proj_out")
_TRANSFORMER_BLOCK = (
    "norm1", "norm2", "norm3",
    "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
    "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
    "ff.net.0.proj", "ff.net.2",
)  # fmt: skip
_BASIC = {  # diffusers module -> LDM module, outside the block structure
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
}


def unet_to_diffusers(unet_config: dict) -> dict[str, str]:
    """diffusers UNet parameter name -> LDM parameter name (both `.weight` and `.bias`), from a ComfyUI unet_config."""
    num_res = list(unet_config["num_res_blocks"])
    levels = len(unet_config["channel_mult"])
    depth_in = list(unet_config["transformer_depth"])
    depth_out = list(unet_config["transformer_depth_output"])
    depth_mid = unet_config.get("transformer_depth_middle") or 0
    modules: dict[str, str] = {}

    def resnet(diff: str, ldm: str) -> None:
        for ldm_suffix, diff_suffix in _RESNET.items():
            modules[f"{diff}.{diff_suffix}"] = f"{ldm}.{ldm_suffix}"

    def attention(diff: str, ldm: str, depth: int) -> None:
        for name in _ATTENTION:
            modules[f"{diff}.{name}"] = f"{ldm}.{name}"
        for t in range(depth):
            for name in _TRANSFORMER_BLOCK:
                modules[f"{diff}.transformer_blocks.{t}.{name}"] = f"{ldm}.transformer_blocks.{t}.{name}"

    for level in range(levels):
        block = 1 + (num_res[level] + 1) * level
        for i in range(num_res[level]):
            resnet(f"down_blocks.{level}.resnets.{i}", f"input_blocks.{block}.0")
            depth = depth_in.pop(0)
            if depth > 0:
                attention(f"down_blocks.{level}.attentions.{i}", f"input_blocks.{block}.1", depth)
            block += 1
        modules[f"down_blocks.{level}.downsamplers.0.conv"] = f"input_blocks.{block}.0.op"

    attention("mid_block.attentions.0", "middle_block.1", depth_mid)
    resnet("mid_block.resnets.0", "middle_block.0")
    resnet("mid_block.resnets.1", "middle_block.2")

    num_res_up = num_res[::-1]
    for level in range(levels):
        block = (num_res_up[level] + 1) * level
        count = num_res_up[level] + 1
        for i in range(count):
            resnet(f"up_blocks.{level}.resnets.{i}", f"output_blocks.{block}.0")
            inner = 1
            depth = depth_out.pop()
            if depth > 0:
                attention(f"up_blocks.{level}.attentions.{i}", f"output_blocks.{block}.1", depth)
                inner = 2
            if i == count - 1:
                modules[f"up_blocks.{level}.upsamplers.0.conv"] = f"output_blocks.{block}.{inner}.conv"
            block += 1

    modules.update(_BASIC)
    out = {}
    for d, m in modules.items():
        for p in ("weight", "bias"):
            if p == "bias" and d.endswith((".to_q", ".to_k", ".to_v")):
                continue  # bias-free projections
            out[f"{d}.{p}"] = f"{m}.{p}"
    return out


@dataclass
class FamilyTables:
    """Weight names and shapes of one family (weights only; biases and norms are included, buffers are not)."""

    family: str
    unet_config: dict
    unet_diffusers: dict[str, Shape]  # diffusers UNet param -> shape
    unet_ldm: dict[str, Shape]  # LDM UNet param (no `diffusion_model.` prefix) -> shape
    diffusers_to_ldm: dict[str, str]  # full unet_to_diffusers() result (may name absent params)
    # role ("te", "te1", "te2") -> HF-style param name with `text_model.` prefix (diffusers model size) -> shape
    text_encoders: dict[str, dict[str, Shape]]
    # role -> module names of the diffusers/transformers model as it is built today (CLIP-L is flattened in
    # transformers 5, so no `text_model.` there), mapped to the module's weight shape (None for containers)
    diffusers_modules: dict[str, dict[str, Shape | None]] = field(default_factory=dict)
    custom: bool = False  # built from an actual model's configs (its text encoders have their own layer counts)

    def consumer_text_encoder(self, role: str) -> dict[str, Shape]:
        """HF-style text-encoder params as the consumers' single-file checkpoints hold them (SD 2.x: 24 layers)."""
        params = dict(self.text_encoders[role])
        have = 1 + max(int(k.split(".")[3]) for k in params if k.startswith("text_model.encoder.layers."))
        wanted = CONSUMER_TE_LAYERS[self.family][role]
        if self.custom:  # single files keep the one layer diffusers' SD 2.x text encoder drops
            wanted = have + (1 if self.family == "sd2" else 0)
        last = f"text_model.encoder.layers.{have - 1}."
        for extra in range(have, wanted):
            for k, v in list(params.items()):
                if k.startswith(last):
                    params[k.replace(last, f"text_model.encoder.layers.{extra}.")] = v
        return params


def _te_roles(family: str) -> list[str]:
    """The consumers' names of a family's text encoders: "te" for the only one, else "te1", "te2"."""
    parts = [te.part for te in family_info(family).text_encoders]
    return ["te"] if len(parts) == 1 else parts


def _text_encoder(config: dict):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with_projection = "CLIPTextModelWithProjection" in (config.get("architectures") or [])
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(CLIPTextConfig.from_dict(config))


def build_meta_models(family: str) -> dict:
    """The family's full-size diffusers UNet and transformers text encoders (architectures from
    `loraforge.families`), on the meta device (no weights, ~1 s)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    fam = family_info(family)
    with init_empty_weights():
        models = {"unet": UNet2DConditionModel.from_config(fam.full_size_config("unet"))}
        for role, te in zip(_te_roles(family), fam.text_encoders):
            models[role] = _text_encoder(fam.full_size_config(te.diffusers))
    return models


def _module_table(model) -> dict[str, Shape | None]:
    table: dict[str, Shape | None] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        table[name] = tuple(weight.shape) if weight is not None and hasattr(weight, "shape") else None
    return table


def comfy_unet_config(unet_config: dict) -> dict:
    """ComfyUI's `unet_config` (what `comfy/model_detection.py` reads off a checkpoint) for a diffusers UNet config:
    `num_res_blocks`, `channel_mult`, `transformer_depth` (per input res block), `transformer_depth_middle` and
    `transformer_depth_output` (per output block, the last entry belonging to `output_blocks.0`)."""
    down = list(unet_config["down_block_types"])
    up = list(unet_config["up_block_types"])
    levels = len(down)

    def per_level(value) -> list[int]:
        return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)] * levels

    layers = per_level(unet_config.get("layers_per_block", 2))
    depth = per_level(unet_config.get("transformer_layers_per_block", 1))
    depth = [d[0] if isinstance(d, (list, tuple)) else d for d in depth]
    reverse = unet_config.get("reverse_transformer_layers_per_block")
    up_depth = [int(d if not isinstance(d, (list, tuple)) else d[0]) for d in reverse] if reverse else depth[::-1]
    channels = list(unet_config["block_out_channels"])
    transformer_depth = []
    for level, block in enumerate(down):
        transformer_depth += [depth[level] if "CrossAttn" in block else 0] * layers[level]
    output = []  # output_blocks.0, 1, ... in order
    for level, block in enumerate(up):
        output += [up_depth[level] if "CrossAttn" in block else 0] * (layers[::-1][level] + 1)
    middle = depth[-1] if unet_config.get("mid_block_type", "UNetMidBlock2DCrossAttn") == "UNetMidBlock2DCrossAttn" else 0
    return {
        "num_res_blocks": layers,
        "channel_mult": [c // channels[0] for c in channels],
        "transformer_depth": transformer_depth,
        "transformer_depth_middle": middle,
        "transformer_depth_output": output[::-1],
    }


def model_tables_key(
    family: str, unet_config: dict, text_encoder_configs: list[dict] | None = None
) -> ModelArchitecture:
    """The architecture of an actual model (its diffusers UNet config and text-encoder configs, e.g. a tiny or
    fine-tuned variant), which `family_tables` and the consumer models take in place of a family name. Same configs,
    equal keys."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    return ModelArchitecture.of(family, unet_config, text_encoder_configs)


def family_of(key: str | ModelArchitecture) -> str:
    """The family of a `family_tables` key ("sdxl" for "sdxl" and for an SDXL model's architecture)."""
    return key.family if isinstance(key, ModelArchitecture) else key


def _build_spec_models(key: ModelArchitecture) -> tuple[dict, dict]:
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    family, unet_cfg, te_cfgs = key.family, key.unet_config, key.text_encoder_configs
    with init_empty_weights():
        models = {"unet": UNet2DConditionModel.from_config(unet_cfg)}
        roles = _te_roles(family)
        if te_cfgs and len(te_cfgs) != len(roles):
            raise FamilyMismatchError(
                f"{family} has {len(roles)} text encoder(s), the model {len(te_cfgs)}: pass the model's own family"
            )
        for role, cfg in zip(roles, te_cfgs):
            models[role] = _text_encoder(cfg)
    if not te_cfgs:  # UNet-only description: the family's full-size text encoders
        full = build_meta_models(family)
        models.update({r: full[r] for r in roles})
    return models, comfy_unet_config(unet_cfg)


@functools.lru_cache(maxsize=None)
def family_tables(family: str | ModelArchitecture) -> FamilyTables:
    """Cached tables of `family` ("sd15", "sd2", "sdxl": full size, built on the meta device at first use) or of a
    `ModelArchitecture` from `model_tables_key` (an actual model's architecture)."""
    custom = isinstance(family, ModelArchitecture)
    if custom:
        models, cfg = _build_spec_models(family)
        name = family.family
    elif family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    else:
        models, cfg, name = build_meta_models(family), UNET_CONFIGS[family], family
    unet = models.pop("unet")
    d2l = unet_to_diffusers(cfg)
    unet_diffusers = {k: tuple(v.shape) for k, v in unet.named_parameters()}
    missing = [k for k in unet_diffusers if k not in d2l]
    if missing:  # the derivation must cover every weight of the real model
        raise AssertionError(f"{family}: unet_to_diffusers misses {missing[:5]}")
    unet_ldm = {d2l[k]: v for k, v in unet_diffusers.items()}
    text_encoders: dict[str, dict[str, Shape]] = {}
    diffusers_modules = {"unet": _module_table(unet)}
    for role, model in models.items():
        params = {}
        for k, v in model.named_parameters():
            if not k.startswith("text_model.") and not k.startswith("text_projection"):
                k = "text_model." + k  # transformers 5 flattens CLIPTextModel
            params[k] = tuple(v.shape)
        text_encoders[role] = params
        diffusers_modules[role] = _module_table(model)
    return FamilyTables(name, cfg, unet_diffusers, unet_ldm, d2l, text_encoders, diffusers_modules, custom)


def layer_kind(name: str, shape: Shape | None) -> str:
    """linear / conv / norm / embedding / container, from a module's name and weight shape."""
    if shape is None:
        return "container"
    if "embedding" in name.rsplit(".", 1)[-1] or name.endswith("token_embedding"):
        return "embedding"
    return {4: "conv", 2: "linear", 1: "norm"}.get(len(shape), "other")
