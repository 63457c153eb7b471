"""Textual-inversion embedding files, in the layouts AUTOMATIC1111, ComfyUI and diffusers read (formats.md §7):

- SDXL: safetensors `{"clip_l": [n, 768], "clip_g": [n, 1280]}` (kohya, diffusers' advanced script, LyCORIS);
- SD 1.x / 2.x: safetensors with a single tensor `{"emb_params": [n, d]}` (kohya's layout; A1111 reads any single
  tensor, ComfyUI takes the first value, diffusers' `load_textual_inversion` takes a single-key dict).

Reading also accepts diffusers' `learned_embeds` (`{"<token>": [d]}`) and, only when asked (`allow_pickle`), A1111's
`.pt` (`string_to_param["*"]`), loaded with torch's `weights_only` mode.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import FamilyMismatchError, NonFiniteTensorError, PickleRefusedError, UnsupportedError
from ..families import FAMILIES, family
from ..utils.files import PICKLE_SUFFIXES, open_safetensors, save_safetensors_atomic
from .file_kind import require_kind

SD_KEY = "emb_params"  # the one tensor of a single-encoder file (kohya)
# the layouts of several encoders, one tensor per encoder (SDXL: clip_l, clip_g)
MULTI_KEYS = tuple({f.embedding_keys for f in FAMILIES.values() if len(f.embedding_keys) > 1})

EMBEDDINGS_SUFFIX = "_emb"  # a run's embeddings file: <output_name>_emb.safetensors (A1111's trigger: its file name)


def embeddings_file_name(output_name: str) -> str:
    return f"{output_name}{EMBEDDINGS_SUFFIX}.safetensors"


def embedding_keys(name: str) -> tuple[str, ...]:
    keys = family(name).embedding_keys
    return keys if len(keys) > 1 else (SD_KEY,)


def save_embeddings(
    path: str | Path, family: str, vectors: list[torch.Tensor], metadata: dict[str, str] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """`vectors[i]` are the new rows [n, d_i] of text encoder i, in token order (`<s0>`, `<s1>`, ...)."""
    keys = embedding_keys(family)
    if len(vectors) != len(keys):
        raise FamilyMismatchError(
            f"{family} needs {len(keys)} embedding tensors ({', '.join(keys)}), got {len(vectors)}: the embedding "
            "is for another model family"
        )
    n = {v.shape[0] for v in vectors}
    if len(n) != 1:
        raise UnsupportedError(
            f"every text encoder needs the same number of vectors, got {[tuple(v.shape) for v in vectors]}"
        )
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in zip(keys, vectors)}
    save_safetensors_atomic(tensors, path, metadata=metadata)
    return Path(path)


def check_embedding_file(path: str | Path, family_name: str, widths: list[int]) -> tuple[str, list[str]]:
    """Read a written embedding file back as the consumers do (`load_embeddings`: the layout A1111, ComfyUI and
    diffusers' `load_textual_inversion` take, the reader `loraforge sample` uses) and compare it with the model:
    one tensor per text encoder of `family_name`, each as wide as that encoder (`widths`). Returns (summary,
    problems); no problems: every consumer loads it into this model."""
    try:
        vectors = load_embeddings(path)
    except (UnsupportedError, NonFiniteTensorError) as e:
        return "unreadable", [str(e)]
    keys = family(family_name).embedding_keys
    problems = []
    if set(vectors) != set(keys):
        problems.append(f"holds {', '.join(sorted(vectors))}; {family_name} reads {', '.join(keys)}")
    for key, width in zip(keys, widths):
        if key in vectors and vectors[key].shape[1] != width:
            problems.append(f"{key} vectors are {vectors[key].shape[1]} wide, the text encoder {width}")
    summary = ", ".join(f"{k} {v.shape[0]}×{v.shape[1]}" for k, v in vectors.items())
    return f"{summary}: loads in A1111, ComfyUI and diffusers" if not problems else summary, problems


def load_embeddings(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Return `{"clip_l": [n, d]}` (SD 1.x/2.x) or `{"clip_l": ..., "clip_g": ...}` (SDXL), 2-D tensors."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise PickleRefusedError(
                f"{path} is a pickle-based file; unpickling can run code. Pass --allow-pickle to read it (loraforge "
                "then uses torch's weights_only mode)"
            )
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    else:
        require_kind(path, ("embedding",), "--embedding", UnsupportedError)
        with open_safetensors(path) as f:
            data = {k: f.get_tensor(k) for k in f.keys()}
    vectors = _vectors(path, data)
    bad = [key for key, v in vectors.items() if not torch.isfinite(v).all()]
    if bad:
        raise NonFiniteTensorError(f"{path}: the embedding holds NaN or infinite values ({', '.join(bad)}), as a "
                                   "diverged training run leaves; use an earlier checkpoint's embedding or train again "
                                   "with a lower learning rate")
    return vectors


def _vectors(path: Path, data: dict) -> dict[str, torch.Tensor]:
    if "string_to_param" in data:  # A1111's TI trainer
        params = data["string_to_param"]
        if len(params) != 1:
            raise UnsupportedError(f"{path}: A1111 embedding with {len(params)} terms; exactly one is supported")
        return {"clip_l": _2d(next(iter(params.values())))}
    for keys in MULTI_KEYS:
        if all(k in data for k in keys):
            return {k: _2d(data[k]) for k in keys}
    if SD_KEY in data:
        return {"clip_l": _2d(data[SD_KEY])}
    tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
    if len(tensors) == 1:  # diffusers learned_embeds, or any single-tensor file
        return {"clip_l": _2d(tensors[0])}
    raise UnsupportedError(f"{path}: not an embedding file (keys: {', '.join(list(data)[:6])})")


def _2d(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().float()
    return t.unsqueeze(0) if t.ndim == 1 else t
