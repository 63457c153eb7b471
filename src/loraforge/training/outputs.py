"""Writing a trained network: the kohya file, the diffusers file, and their metadata. Used for the final result
and for every checkpoint."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..formats.diffusers_lora import WEIGHT_NAME, save_diffusers_lora
from ..formats.embeddings import save_embeddings
from ..formats.kohya import kohya_state_dict
from ..formats.metadata import model_hashes, training_metadata
from ..utils.files import save_safetensors_atomic

log = logging.getLogger(__name__)

SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class WrittenFiles:
    kohya: Path | None = None
    diffusers: Path | None = None
    embeddings: Path | None = None
    extra: dict[str, Path] = field(default_factory=dict)


def write_lora_files(
    cfg, network, model, run_info: dict, folder: Path, kohya_name: str, pivotal=None
) -> WrittenFiles:
    dtype = SAVE_DTYPES[cfg.output.save_precision]
    family = model.family.name
    out = WrittenFiles()
    folder.mkdir(parents=True, exist_ok=True)
    if cfg.output.write_kohya:
        sd = kohya_state_dict(network.module_tensors(), family, dict(model.unet.config), dtype)
        meta = training_metadata(cfg, run_info, family, network.algo)
        meta["sshs_model_hash"], meta["sshs_legacy_hash"] = model_hashes(sd, meta)
        out.kohya = folder / f"{kohya_name}.safetensors"
        save_safetensors_atomic(sd, out.kohya, metadata=meta)
    if cfg.output.write_diffusers:
        out.diffusers = save_diffusers_lora(network, family, folder / WEIGHT_NAME, dtype)
    if pivotal is not None:
        meta = {"tokens": ",".join(pivotal.tokens), "token_abstraction": cfg.training.token_abstraction}
        out.embeddings = save_embeddings(folder / f"{kohya_name}_emb.safetensors", family, pivotal.vectors(), meta, dtype)
    return out
