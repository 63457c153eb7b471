"""What a `.safetensors` file holds, from its key names only (the header; no tensor is read): a Stable Diffusion
model in the original layout, a VAE, a LoRA-family file, an embedding, or something else. Used to refuse a file
given where another kind is expected (a LoRA as the base model, a model as a LoRA) with a message that says which
option the file belongs to, before anything is loaded."""

from __future__ import annotations

from pathlib import Path

from ..errors import LoraforgeError
from ..utils.files import open_safetensors
from .cloneofsimo import PAIR_KEY

MODEL_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.embedders.")
VAE_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
EMBEDDING_KEYS = {"emb_params", "clip_l", "clip_g", "clip_h", "t5", "string_to_param", "string_to_token", "name", "step"}
LORA_MARKS = ("lora_", ".alpha", "hada_", "lokr_", "dora_scale", "oft_", ".diff", "lora.down", "lora.up")

LABELS = {"model": "a Stable Diffusion model", "vae": "a VAE", "lora": "a LoRA file", "embedding": "an embedding"}
WHERE = {"model": "it is a base model (--model / --base, or model.pretrained_model_name_or_path)",
         "lora": "it is a LoRA: apply it with --lora (sample, merge into-model)",
         "embedding": "it is a textual-inversion embedding: load it with --embedding",
         "vae": "it is a VAE: give it as model.vae"}


def kind_of_keys(keys) -> str:
    keys = list(keys)
    if any(k.startswith(MODEL_PREFIXES) for k in keys):
        return "model"
    if keys and set(keys) <= EMBEDDING_KEYS:
        return "embedding"
    if any(m in k for k in keys for m in LORA_MARKS) or any(PAIR_KEY.match(k) for k in keys):
        return "lora"
    if keys and all(k.startswith(VAE_PREFIXES) for k in keys):
        return "vae"
    return "unknown"


def kind_of_file(path: str | Path) -> str | None:
    """The kind of a `.safetensors` file (None for anything else: a folder, a pickle, a hub id). A missing or
    unreadable `.safetensors` file raises the reader's error naming it."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors" or not path.exists() or path.is_dir():
        return None
    with open_safetensors(path) as f:
        return kind_of_keys(f.keys())


def require_kind(path, expected: tuple[str, ...], what: str, error: type[LoraforgeError], hint: str = "") -> None:
    """Raise `error` naming `path`, `what` it was given as, what it is and where it belongs (or `hint`), when it is
    a `.safetensors` file of another known kind than the `expected` ones (a file of no known kind, or not a
    `.safetensors` file, is left to the loaders, which judge it better)."""
    kind = kind_of_file(path)
    if kind in (None, "unknown") or kind in expected:
        return
    raise error(f"{what} {path}: this is {LABELS[kind]}, not {LABELS[expected[0]]}; {hint or WHERE[kind]}")
