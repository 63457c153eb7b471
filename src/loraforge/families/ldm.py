"""Names of diffusers components in the original single-file layout (LDM for SD 1.x / 2.x, SGM for SDXL).

Why we write this ourselves: the diffusers package only ships the original -> diffusers direction
(`diffusers.loaders.single_file_utils`). The reverse scripts live only in the diffusers repository
(`scripts/convert_diffusers_to_original_*.py`), are not importable, and hard-code SD 1.x's 4 levels with 2 resnets.
Here every map is derived from the model config (block types, `layers_per_block`, embeddings), so the same code names
the tiny test models and the full-size ones. The same tables give the SGM module names that kohya LoRA files use for
SDXL (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`).

Layout, without the `model.diffusion_model.` / `first_stage_model.` prefixes:

* UNet: `conv_in` -> `input_blocks.0.0`; `time_embedding.linear_{1,2}` -> `time_embed.{0,2}`; SDXL's
  `add_embedding.linear_{1,2}` -> `label_emb.0.{0,2}`; down block b, layer l -> `input_blocks.i.0` (resnet) and
  `input_blocks.i.1` (transformer), with i counted over all levels and the downsampler taking its own index
  (`input_blocks.i.0.op`); mid block -> `middle_block.{0,1,2}`; up block b, layer l -> `output_blocks.i.{0,1}`, the
  upsampler of a level sitting in its last layer at index 2 when the level has attentions, else 1
  (`output_blocks.i.{1|2}.conv`); `conv_norm_out`/`conv_out` -> `out.0`/`out.2`. Resnets rename
  `norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut` to
  `in_layers.0, in_layers.2, emb_layers.1, out_layers.0, out_layers.3, skip_connection`. Transformer internals keep
  their names; proj_in/proj_out keep their shapes (1x1 conv for SD 1.x, linear where the config has
  `use_linear_projection`, as the original configs of SD 2.x and SDXL say too), so no reshape is needed.
* VAE: `encoder.down_blocks.i.resnets.j` -> `encoder.down.i.block.j`, downsamplers -> `encoder.down.i.downsample`,
  mid -> `mid.block_1 / attn_1 / block_2`, `conv_norm_out` -> `norm_out`, decoder up blocks in reversed order
  (`decoder.up_blocks.i` -> `decoder.up.{n-1-i}`), `conv_shortcut` -> `nin_shortcut`; the mid attention
  `group_norm, to_q, to_k, to_v, to_out.0` -> `norm, q, k, v, proj_out`, stored as 1x1 conv weights ([C, C, 1, 1]).
* Text encoders: see `clip_to_original` (HF layout under `text_model.`) and `clip_to_open_clip` (OpenCLIP layout).
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, Mapping

from ..errors import UnsupportedError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

_RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}

# UNet2DConditionModel defaults, for partial config dicts.
_UNET_DEFAULTS = {
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "layers_per_block": 2,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "addition_embed_type": None,
    "class_embed_type": None,
}


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _unet_structure(config: Mapping[str, Any]) -> tuple:
    """The few config entries the names depend on, hashable (for the caches)."""
    return tuple((k, _freeze(config.get(k, default))) for k, default in _UNET_DEFAULTS.items())


def _per_block(value: Any, n: int) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [int(value)] * n


def _has_attention(block_type: str) -> bool:
    # Only the SD blocks (CrossAttn*Block2D: Transformer2DModel = the original SpatialTransformer). Other block kinds
    # are left unnamed, so `unet_key_map` reports their keys instead of inventing names.
    return "CrossAttn" in block_type


@functools.lru_cache(maxsize=32)
def _unet_table(structure: tuple) -> dict[str, str]:
    cfg = dict(structure)
    table: dict[str, str] = {}

    def resnet(diffusers: str, original: str) -> None:
        table[diffusers] = original
        for d, o in _RESNET_PARTS.items():
            table[f"{diffusers}.{d}"] = f"{original}.{o}"

    table["conv_in"] = "input_blocks.0.0"
    table["time_embedding"] = "time_embed"
    table["time_embedding.linear_1"] = "time_embed.0"
    table["time_embedding.linear_2"] = "time_embed.2"
    # SDXL: the "text_time" add_embedding (and a "projection"/"timestep" class embedding) is the original `label_emb`.
    for kind, name in (("addition_embed_type", "add_embedding"), ("class_embed_type", "class_embedding")):
        if cfg[kind] in ("text_time", "projection", "timestep"):
            table[name] = "label_emb.0"
            table[f"{name}.linear_1"] = "label_emb.0.0"
            table[f"{name}.linear_2"] = "label_emb.0.2"

    down = list(cfg["down_block_types"])
    up = list(cfg["up_block_types"])
    if len(up) != len(down):
        raise UnsupportedError(f"the UNet config has {len(down)} down blocks but {len(up)} up blocks")
    n = len(down)
    layers = _per_block(cfg["layers_per_block"], n)

    index = 1
    for b, block_type in enumerate(down):
        for layer in range(layers[b]):
            resnet(f"down_blocks.{b}.resnets.{layer}", f"input_blocks.{index}.0")
            if _has_attention(block_type):
                table[f"down_blocks.{b}.attentions.{layer}"] = f"input_blocks.{index}.1"
            index += 1
        if b < n - 1:  # every level but the last halves the resolution
            table[f"down_blocks.{b}.downsamplers.0"] = f"input_blocks.{index}.0"
            table[f"down_blocks.{b}.downsamplers.0.conv"] = f"input_blocks.{index}.0.op"
            index += 1

    if cfg["mid_block_type"] == "UNetMidBlock2DCrossAttn":
        # resnet, attention, resnet (its single layer; `transformer_layers_per_block` stays inside the attention)
        resnet("mid_block.resnets.0", "middle_block.0")
        table["mid_block.attentions.0"] = "middle_block.1"
        resnet("mid_block.resnets.1", "middle_block.2")

    up_layers = list(reversed(layers))
    index = 0
    for b, block_type in enumerate(up):
        count = up_layers[b] + 1  # one more than down: it also takes the skip of the downsampler
        for layer in range(count):
            resnet(f"up_blocks.{b}.resnets.{layer}", f"output_blocks.{index}.0")
            if _has_attention(block_type):
                table[f"up_blocks.{b}.attentions.{layer}"] = f"output_blocks.{index}.1"
            if layer == count - 1 and b < n - 1:
                slot = 2 if _has_attention(block_type) else 1
                table[f"up_blocks.{b}.upsamplers.0"] = f"output_blocks.{index}.{slot}"
            index += 1

    table["conv_norm_out"] = "out.0"
    table["conv_out"] = "out.2"
    return table


@functools.lru_cache(maxsize=32)
def _unet_reverse_table(structure: tuple) -> dict[str, str]:
    table = _unet_table(structure)
    reverse = {v: k for k, v in table.items()}
    assert len(reverse) == len(table), "UNet name table is not one-to-one"
    return reverse


def _translate(path: str, table: Mapping[str, str], what: str) -> str:
    """Longest dotted prefix of `path` found in `table`, replaced; the rest of the path is kept."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        head = ".".join(parts[:i])
        if head in table:
            return ".".join([table[head], *parts[i:]])
    raise KeyError(f"{what}: no counterpart for {path!r}")


def unet_module_to_original(module_path: str, unet_config: Mapping[str, Any]) -> str:
    """Diffusers UNet module (or parameter) path -> original LDM/SGM path, without `model.diffusion_model.`.

    `down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q` -> `input_blocks.4.1.transformer_blocks.0.attn1.to_q`
    for SDXL. Container modules with no original counterpart (`down_blocks.1`) raise KeyError.
    """
    return _translate(module_path, _unet_table(_unet_structure(unet_config)), "diffusers UNet path")


def original_module_to_unet(module_path: str, unet_config: Mapping[str, Any]) -> str:
    """Original LDM/SGM UNet module (or parameter) path -> diffusers path; the reverse of `unet_module_to_original`.

    A leading `model.diffusion_model.` is accepted and dropped.
    """
    module_path = module_path.removeprefix(UNET_PREFIX)
    return _translate(module_path, _unet_reverse_table(_unet_structure(unet_config)), "original UNet path")


def _config_key(config: Mapping[str, Any]) -> str:
    return json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}, sort_keys=True, default=str)


@functools.lru_cache(maxsize=16)
def _unet_keys(config_json: str) -> tuple[str, ...]:
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        model = UNet2DConditionModel.from_config(json.loads(config_json))
    return tuple(model.state_dict().keys())


@functools.lru_cache(maxsize=16)
def _vae_keys(config_json: str) -> tuple[str, ...]:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL

    with init_empty_weights():
        model = AutoencoderKL.from_config(json.loads(config_json))
    return tuple(model.state_dict().keys())


def _translate_all(keys, table, what: str) -> dict[str, str]:
    """Translate every key with `table`; `UnsupportedError` listing the keys the original layout cannot name."""
    out: dict[str, str] = {}
    unknown = []
    for key in keys:
        try:
            out[key] = _translate(key, table, f"diffusers {what} key")
        except KeyError:
            unknown.append(key)
    if unknown:
        raise UnsupportedError(f"{len(unknown)} {what} keys have no original-layout name, e.g. {unknown[:5]}")
    return out


def unet_key_map(unet_config: Mapping[str, Any], keys=None) -> dict[str, str]:
    """Every diffusers UNet state-dict key -> original key (without `model.diffusion_model.`).

    `keys` defaults to the state dict of a UNet built from `unet_config` with empty (meta) weights. Raises ValueError
    listing the keys this layout cannot name (a UNet feature the original format does not have).
    """
    if keys is None:
        keys = _unet_keys(_config_key(unet_config))
    return _translate_all(keys, _unet_table(_unet_structure(unet_config)), "UNet")


def unet_to_original(state_dict: Mapping[str, Any], unet_config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers UNet state dict renamed to the original layout (no prefix); tensors are passed through unchanged."""
    names = unet_key_map(unet_config, keys=list(state_dict))
    return {names[k]: v for k, v in state_dict.items()}


# ---------------------------------------------------------------------------------------------------------------- VAE

_VAE_ATTENTION_PARTS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_RESNET_PARTS = {
    "norm1": "norm1",
    "conv1": "conv1",
    "norm2": "norm2",
    "conv2": "conv2",
    "conv_shortcut": "nin_shortcut",
}


@functools.lru_cache(maxsize=32)
def _vae_table(num_blocks: int, layers_per_block: int) -> dict[str, str]:
    table: dict[str, str] = {}

    def resnet(diffusers: str, original: str) -> None:
        table[diffusers] = original
        for d, o in _VAE_RESNET_PARTS.items():
            table[f"{diffusers}.{d}"] = f"{original}.{o}"

    for part in ("encoder", "decoder"):
        table[f"{part}.conv_in"] = f"{part}.conv_in"
        table[f"{part}.conv_out"] = f"{part}.conv_out"
        table[f"{part}.conv_norm_out"] = f"{part}.norm_out"
        resnet(f"{part}.mid_block.resnets.0", f"{part}.mid.block_1")
        resnet(f"{part}.mid_block.resnets.1", f"{part}.mid.block_2")
        table[f"{part}.mid_block.attentions.0"] = f"{part}.mid.attn_1"
        for d, o in _VAE_ATTENTION_PARTS.items():
            table[f"{part}.mid_block.attentions.0.{d}"] = f"{part}.mid.attn_1.{o}"
    for i in range(num_blocks):
        for j in range(layers_per_block):
            resnet(f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}")
        if i < num_blocks - 1:
            table[f"encoder.down_blocks.{i}.downsamplers.0"] = f"encoder.down.{i}.downsample"
        level = num_blocks - 1 - i  # the original decoder counts its levels from the bottom
        for j in range(layers_per_block + 1):
            resnet(f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{level}.block.{j}")
        if i < num_blocks - 1:
            table[f"decoder.up_blocks.{i}.upsamplers.0"] = f"decoder.up.{level}.upsample"
    for name in ("quant_conv", "post_quant_conv"):
        table[name] = name
    return table


def _vae_structure(vae_config: Mapping[str, Any]) -> tuple[int, int]:
    blocks = vae_config.get("down_block_types") or vae_config.get("block_out_channels") or (None,) * 4
    return len(blocks), int(vae_config.get("layers_per_block", 2))


def vae_key_map(vae_config: Mapping[str, Any], keys=None) -> dict[str, str]:
    """Every diffusers AutoencoderKL state-dict key -> original key (without `first_stage_model.`)."""
    if keys is None:
        keys = _vae_keys(_config_key(vae_config))
    return _translate_all(keys, _vae_table(*_vae_structure(vae_config)), "VAE")


_VAE_CONV_ATTENTION = re.compile(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$")


def vae_to_original(state_dict: Mapping[str, Any], vae_config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers VAE state dict in the original layout; mid-attention linears become 1x1 conv weights."""
    names = vae_key_map(vae_config, keys=list(state_dict))
    out = {}
    for key, value in state_dict.items():
        name = names[key]
        if _VAE_CONV_ATTENTION.search(name) and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)
        out[name] = value
    return out


# ------------------------------------------------------------------------------------------------------ text encoders

SD1_TEXT_PREFIX = "cond_stage_model.transformer."  # + text_model.* (HF CLIP layout)
SD2_TEXT_PREFIX = "cond_stage_model.model."  # OpenCLIP layout
SDXL_TEXT1_PREFIX = "conditioner.embedders.0.transformer."  # + text_model.* (HF CLIP layout)
SDXL_TEXT2_PREFIX = "conditioner.embedders.1.model."  # OpenCLIP layout


def _clip_state(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """HF CLIP text state dict without the `text_model.` level (absent in transformers >= 5.6 CLIPTextModel, present in
    CLIPTextModelWithProjection and older versions) and without the `position_ids` buffer."""
    return {k.removeprefix("text_model."): v for k, v in state_dict.items() if not k.endswith("position_ids")}


def clip_to_original(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """HF CLIP text encoder (CLIP-L of SD 1.x / SDXL) -> the original `transformer.text_model.*` layout (keys relative
    to `cond_stage_model.transformer.` or `conditioner.embedders.0.transformer.`).

    The original checkpoints keep the HF layout, so this only puts back the `text_model.` level that transformers 5.6+
    dropped. A `text_projection` has no place in this layout and is refused.
    """
    sd = _clip_state(state_dict)
    if any(k.startswith("text_projection") for k in sd):
        raise ValueError("a CLIP-L text encoder in the original layout has no text_projection; pass a CLIPTextModel")
    return {f"text_model.{k}": v for k, v in sd.items()}


_OPEN_CLIP_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)$")
_OPEN_CLIP_PARTS = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_OPEN_CLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}


def clip_to_open_clip(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """HF CLIP text encoder -> OpenCLIP layout (keys relative to `cond_stage_model.model.` for SD 2.x and
    `conditioner.embedders.1.model.` for SDXL).

    `token_embedding.weight`, `positional_embedding`, `transformer.resblocks.N.{ln_1, ln_2, attn.in_proj_weight/bias
    (q|k|v concatenated on dim 0), attn.out_proj, mlp.c_fc, mlp.c_proj}`, `ln_final`, and `text_projection` stored
    transposed ([hidden, projection]: OpenCLIP computes `x @ text_projection`).
    """
    import torch

    sd = _clip_state(state_dict)
    out: dict[str, Any] = {}
    qkv: dict[tuple[int, str], dict[str, Any]] = {}
    unknown = []
    for key, value in sd.items():
        if key in _OPEN_CLIP_TOP:
            out[_OPEN_CLIP_TOP[key]] = value
            continue
        if key == "text_projection.weight":
            out["text_projection"] = value.t().contiguous()
            continue
        match = _OPEN_CLIP_LAYER.match(key)
        if not match:
            unknown.append(key)
            continue
        layer, rest = int(match.group(1)), match.group(2)
        qkv_match = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
        if qkv_match:
            qkv.setdefault((layer, qkv_match.group(2)), {})[qkv_match.group(1)] = value
            continue
        try:
            out[f"transformer.resblocks.{layer}.{_translate(rest, _OPEN_CLIP_PARTS, 'CLIP key')}"] = value
        except KeyError:
            unknown.append(key)
    if unknown:
        raise UnsupportedError(f"{len(unknown)} text-encoder keys have no OpenCLIP name, e.g. {unknown[:5]}")
    for (layer, kind), parts in sorted(qkv.items()):
        if sorted(parts) != ["k", "q", "v"]:
            raise UnsupportedError(f"text-encoder layer {layer} lacks some of q/k/v_proj.{kind}")
        name = "in_proj_weight" if kind == "weight" else "in_proj_bias"
        out[f"transformer.resblocks.{layer}.attn.{name}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out
