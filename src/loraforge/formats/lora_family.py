"""Which family a LoRA file was made for: from its tensors' widths first, then key names, then metadata (one rule,
used by the file reader, `check` and the tools)."""

from __future__ import annotations

import re

from ..families import FAMILIES
from .consumers.keys import delta_shape, group_modules


def _in_width(t) -> int | None:
    shape = delta_shape(t)
    return shape[1] if shape else None


# full-size widths that tell the families apart: cross-attention input, and the only text encoder's hidden size
# (UNet families only: FLUX files are told apart by their key names)
_CROSS_ATTENTION_WIDTHS = {f.components["unet"]["cross_attention_dim"]: f.name for f in FAMILIES.values()
                           if "unet" in f.components}
_TEXT_ENCODER_WIDTHS = {f.components["text_encoder"]["hidden_size"]: f.name for f in FAMILIES.values()
                        if len(f.text_encoders) == 1}


def detect_family(sd, metadata: dict | None = None) -> tuple[str, str]:
    """(family, evidence): cross-attention / text-encoder widths first, then key names, then metadata, else SD 1.x."""
    modules = group_modules(sd)
    names = list(modules)
    for name, m in modules.items():
        if re.search(r"attn2_to_[kv]$", name):
            width = _in_width(m.tensors)
            found = _CROSS_ATTENTION_WIDTHS.get(width)
            if found:
                return found, f"cross-attention input width {width} ({name})"
    for name, m in modules.items():
        if name.startswith("lora_te_") and name.endswith(("q_proj", "k_proj", "v_proj", "mlp_fc1", "out_proj")):
            width = _in_width(m.tensors)
            if width in _TEXT_ENCODER_WIDTHS:
                return _TEXT_ENCODER_WIDTHS[width], f"text-encoder width {width} ({name})"
    if any(n.startswith(("lora_te1_", "lora_te2_")) for n in names):
        return "sdxl", "lora_te1_/lora_te2_ prefixes"
    if any("resblocks" in n for n in names):
        return "sd2", "OpenCLIP module names"
    sgm = [n for n in names if re.search(r"input_blocks_7_1|label_emb|transformer_blocks_[1-9]", n)]
    if sgm:
        return "sdxl", f"SDXL-only block names ({sgm[0]})"
    meta = metadata or {}
    if str(meta.get("ss_base_model_version", "")).startswith("sdxl") or "-xl-" in str(
        meta.get("modelspec.architecture", "")
    ):
        return "sdxl", "metadata"
    if str(meta.get("ss_v2", "")) == "True" or "-v2-" in str(meta.get("modelspec.architecture", "")):
        return "sd2", "metadata"
    return "sd15", "default (no SD 2.x / SDXL evidence)"


def metadata_family(metadata: dict | None) -> str | None:
    meta = metadata or {}
    if str(meta.get("ss_base_model_version", "")).startswith("sdxl"):
        return "sdxl"
    if str(meta.get("ss_v2", "")) == "True":
        return "sd2"
    if meta.get("ss_base_model_version") or "ss_v2" in meta:
        return "sd15"
    return None


def detect_lora_family(sd: dict, metadata: dict | None = None) -> tuple[str, str]:
    """(family, evidence) of a LoRA state dict in any layout (`detect_family` for kohya names)."""
    if any(k.startswith("text_encoder_2.") for k in sd):
        return "sdxl", "text_encoder_2 keys"
    for key, value in sd.items():
        if re.search(r"attn2\.(processor\.)?to_[kv](\.lora_A|\.lora\.down|_lora\.down)", key) and value.dim() >= 2:
            if value.shape[1] in _CROSS_ATTENTION_WIDTHS:
                return _CROSS_ATTENTION_WIDTHS[value.shape[1]], f"cross-attention input width {value.shape[1]} ({key})"
    return detect_family(sd, metadata)


def flux_lora_evidence(sd) -> str | None:
    """Why a state dict is a FLUX LoRA (a key only FLUX files have), or None."""
    pattern = re.compile(r"(double_blocks|single_blocks)[._]\d+[._](img_attn|txt_attn|linear1|processor|modulation)"
                         r"|single_transformer_blocks[._]\d+|transformer_blocks[._]\d+[._]attn[._]add_q_proj"
                         r"|transformer_blocks[._]\d+[._]norm1_context|^lora_te3_encoder_block")
    for key in sd:
        if pattern.search(key):
            return f"FLUX module name ({key})"
    return None
