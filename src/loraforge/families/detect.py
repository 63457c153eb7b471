"""Which family a diffusers folder or a diffusers single-file model type is."""

from __future__ import annotations

import json
from pathlib import Path


def detect_family_from_folder(folder: Path) -> str | None:
    """Family of a diffusers folder from its `model_index.json` and component configs, or None if unsure."""
    index = folder / "model_index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        cls = data.get("_class_name", "")
        if cls.startswith("Flux") or data.get("transformer", [None, None])[1] == "FluxTransformer2DModel":
            return "flux"
        if "XL" in cls or "text_encoder_2" in data and data.get("text_encoder_2", [None])[0]:
            return "sdxl"
    unet_cfg = folder / "unet" / "config.json"
    if unet_cfg.is_file():
        cfg = json.loads(unet_cfg.read_text())
        if cfg.get("addition_embed_type") == "text_time":
            return "sdxl"
        te = folder / "text_encoder" / "config.json"
        hidden_act = json.loads(te.read_text()).get("hidden_act") if te.is_file() else None
        # SD 2.x: OpenCLIP ViT-H text encoder (gelu, 1024 wide), cross_attention_dim 1024, linear projections.
        if cfg.get("cross_attention_dim") == 1024 or hidden_act == "gelu":
            return "sd2"
        return "sd15"
    return None


def folder_architecture(folder: Path) -> dict:
    """A diffusers folder's own architecture as `formats.check.check_state_dict` takes it: `unet_config` and the
    `text_encoder_configs` in order (only configs are read)."""
    folder = Path(folder)
    return {
        "unet_config": json.loads((folder / "unet" / "config.json").read_text()),
        "text_encoder_configs": [json.loads((folder / te / "config.json").read_text())
                                 for te in ("text_encoder", "text_encoder_2") if (folder / te / "config.json").is_file()],
    }


def family_from_single_file_type(model_type: str) -> str | None:
    """Map diffusers' `infer_diffusers_model_type` names to ours."""
    if model_type.startswith("xl_base") or model_type in ("xl_inpaint", "playground-v2-5"):
        return "sdxl"
    if model_type.startswith("v2"):
        return "sd2"
    if model_type in ("v1", "inpainting"):
        return "sd15"
    if model_type in ("flux-dev", "flux-schnell"):
        return "flux"
    return None
