"""Textual-inversion embedding files, in the layouts AUTOMATIC1111, ComfyUI and diffusers read (formats.md §7):

- SDXL: safetensors `{"clip_l": [n, 768], "clip_g": [n, 1280]}` (kohya, diffusers' advanced script, LyCORIS);
- FLUX.1: `{"clip_l": [n, 768]}`, and `{"clip_l": ..., "t5": [n, 4096]}` when T5 got the tokens too (diffusers'
  advanced FLUX script, `--enable_t5_ti`; loraforge's `training.train_t5_ti`);
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

# Who loads a family's embeddings file (the check's summary). FLUX: ComfyUI and Forge put `clip_l` into CLIP-L for
# `embedding:<name>` / the file name; ComfyUI's T5 reads a `t5xxl` tensor (none here: diffusers' `t5` name is kept,
# so its T5 leaves the trigger out), Forge's T5 takes no embeddings (it reads the trigger as text).
CONSUMERS = {"flux": {"clip_l": "clip_l loads in ComfyUI, Forge and diffusers",
                      "t5": "t5 in diffusers only (ComfyUI's T5 reads a t5xxl tensor, Forge's T5 no embedding)"}}
DEFAULT_CONSUMERS = "loads in A1111, ComfyUI and diffusers"


def consumers_text(family_name: str, keys) -> str:
    """Who loads an embeddings file of `family_name` holding `keys` (read back: `clip_l`, `clip_g`, `t5`)."""
    per_key = CONSUMERS.get(family(family_name).name)
    return "; ".join(per_key[k] for k in per_key if k in keys) if per_key else DEFAULT_CONSUMERS

EMBEDDINGS_SUFFIX = "_emb"  # a run's embeddings file: <output_name>_emb.safetensors (A1111's trigger: its file name)


def embeddings_file_name(output_name: str) -> str:
    return f"{output_name}{EMBEDDINGS_SUFFIX}.safetensors"


def embedding_keys(name: str, optional: bool = False) -> tuple[str, ...]:
    """The tensors of the embeddings file pivotal tuning writes for family `name`: one per text encoder given the new
    tokens (`Family.ti_text_encoders`; `optional`: FLUX's T5 too), or kohya's one `emb_params` for a family of one
    text encoder."""
    fam = family(name)
    if len(fam.text_encoders) == 1:
        return (SD_KEY,)
    return tuple(te.embedding_key for te in fam.ti_text_encoders(optional))


def embedding_layouts(name: str) -> list[tuple[str, ...]]:
    """The tensor names an embedding of family `name` holds once read (`load_embeddings`): SD 1.x/2.x `clip_l`;
    SDXL `clip_l, clip_g`; FLUX `clip_l`, or `clip_l, t5`."""
    fam = family(name)
    return list(dict.fromkeys(tuple(te.embedding_key for te in fam.ti_text_encoders(o)) for o in (False, True)))


def save_embeddings(
    path: str | Path, family: str, vectors: list[torch.Tensor], metadata: dict[str, str] | None = None,
    dtype: torch.dtype = torch.float32, optional: bool = False,
) -> Path:
    """`vectors[i]` are the new rows [n, d_i] of the i-th text encoder given the new tokens (`embedding_keys`), in
    token order (`<s0>`, `<s1>`, ...)."""
    keys = embedding_keys(family, optional)
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
    one tensor per text encoder of a layout of `family_name` (`embedding_layouts`), each as wide as that encoder
    (`widths`: one per text encoder of the family, in order). Returns (summary, problems); no problems: every consumer
    loads it into this model."""
    try:
        vectors = load_embeddings(path)
    except (UnsupportedError, NonFiniteTensorError) as e:
        return "unreadable", [str(e)]
    layouts = embedding_layouts(family_name)
    problems = []
    if tuple(sorted(vectors)) not in {tuple(sorted(k)) for k in layouts}:
        problems.append(f"holds {', '.join(sorted(vectors))}; {family_name} reads "
                        f"{' or '.join(', '.join(k) for k in layouts)}")
    for key, width in zip(family(family_name).embedding_keys, widths):
        if key in vectors and vectors[key].shape[1] != width:
            problems.append(f"{key} vectors are {vectors[key].shape[1]} wide, the text encoder {width}")
    summary = ", ".join(f"{k} {v.shape[0]}×{v.shape[1]}" for k, v in vectors.items())
    return f"{summary}: {consumers_text(family_name, vectors)}" if not problems else summary, problems


def load_embeddings(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Return `{"clip_l": [n, d]}` (SD 1.x/2.x, FLUX without T5), `{"clip_l": ..., "clip_g": ...}` (SDXL) or
    `{"clip_l": ..., "t5": ...}` (FLUX), 2-D tensors."""
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
