"""`loraforge convert`: change a file's layout without changing a single weight.

* pickle -> safetensors: `.bin` / `.pkl` / `.pt` / `.pth` / `.ckpt` (diffusers' `pytorch_lora_weights.bin`, accelerate's
  `custom_checkpoint_0.pkl`, original `.ckpt` checkpoints) are opened only with `allow_pickle`, and then with torch's
  `weights_only` loader (no code runs). The tensors keep their keys and dtypes (a `.ckpt`'s `state_dict` is
  unwrapped); anything that is not a tensor is listed and left out (harrywang's converter, seed-practices.md §14);
* A1111 `.pt` embeddings (`string_to_param`) <-> safetensors `{"emb_params": [n, d]}` (SD 1.x / 2.x);
* LoRA: kohya <-> diffusers (`formats.lora_write`; names resolved against `base`, or the family's full-size model, or
  the embedded tiny model a file was made for); a pickled LoRA with `to` goes straight into that layout;
* cloneofsimo/lora (`lora_diffusion`) files, a `.safetensors` "safelora" or a `.pt` list (with `allow_pickle`), ->
  kohya (default) or diffusers; their pivotal-tuning vectors -> an embedding file beside it (`formats.cloneofsimo`);
* checkpoint: single original-layout `.safetensors` <-> diffusers folder (`formats.single_file`, SD 1.x / 2.x / SDXL);
  a pickle `.ckpt` (A1111's `{"state_dict": ...}`) is written only with `write_ckpt` (`--write-ckpt`).

Every output is written atomically and never over an existing path without `overwrite`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import FamilyMismatchError, InputNotFoundError, PickleRefusedError, ShapeMismatchError, ToolError
from ..errors import UnsupportedError
from ..families import BASE_MODEL_KEY, tiny_base_model
from ..formats import cloneofsimo
from ..formats.embeddings import embeddings_file_name, save_embeddings
from ..formats.kohya import kohya_state_dict
from ..formats.lora_file import bind, read_lora_state_dict, read_tensors
from ..formats.lora_write import ADAPTER_METADATA, diffusers_state_dict
from ..formats.single_file import CKPT_SUFFIX, save_checkpoint_tensors
from ..utils.files import PICKLE_SUFFIXES, atomic_path, open_safetensors, save_safetensors_atomic
from .common import check_output, family_metadata, load_sd_model, model_tree
from .flux_files import convert_flux_lora, flux_file
from .merge import check_model_output, write_model

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
EMBEDDING_KEYS = ("emb_params", "clip_l", "clip_g", "clip_h", "t5")


@dataclass
class ConvertResult:
    kind: str  # what was converted, in words
    output: Path
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"{self.kind}: wrote {self.output}"] + [f"  {n}" for n in self.notes]


def load_pickle(path, allow_pickle: bool):
    if not allow_pickle:
        raise PickleRefusedError(
            f"{path} is a pickle-based file; unpickling can run code. Pass --allow-pickle to convert it (loraforge "
            "then loads it with torch's weights_only mode, which refuses anything but tensors and plain data)"
        )
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses arbitrary objects: say so instead of a pickle traceback
        raise UnsupportedError(f"{path}: torch's weights_only loader refused the file ({str(e).splitlines()[0]})") from None


def flatten_tensors(data, prefix: str = "") -> tuple[dict[str, torch.Tensor], list[str]]:
    """Tensors of a (nested) dict by dotted key, and the keys of everything else."""
    tensors: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            tensors[name] = value
        elif isinstance(value, dict):
            sub, lost = flatten_tensors(value, name + ".")
            tensors.update(sub)
            dropped += lost
        else:
            dropped.append(name)
    return tensors, dropped


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing storage (tied weights): give each its own copy (values unchanged)."""
    seen: set[int] = set()
    out = {}
    for k, v in tensors.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else None
        out[k] = v.clone() if ptr in seen else v
        if ptr is not None:
            seen.add(ptr)
    return out


def _a1111_embedding(data) -> bool:
    return isinstance(data, dict) and "string_to_param" in data


def convert(src, dst, *, to: str | None = None, family: str = "auto", base: str | None = None,
            allow_pickle: bool = False, overwrite: bool = False, naming: str = "auto",
            config_dir: str | None = None, dtype=None, write_ckpt: bool = False) -> ConvertResult:
    """Convert `src` into `dst`; the kind of conversion follows from the files (or `to`: "kohya" / "diffusers" for
    LoRA files). A model is written as a pickle `.ckpt` only with `write_ckpt`."""
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise InputNotFoundError(f"{src}: no such file or folder")
    if src.is_dir():
        if (src / "model_index.json").is_file():
            return _folder_to_single_file(src, dst, family, overwrite, dtype, write_ckpt)
        if (src / LORA_WEIGHT_NAME).is_file():
            src = src / LORA_WEIGHT_NAME
        else:
            raise ToolError(f"{src} is neither a diffusers model folder nor a diffusers LoRA folder")
    if src.suffix.lower() in PICKLE_SUFFIXES:
        if to is None:  # checked before a (maybe large) pickle is loaded
            _check_safetensors_output(src, dst, overwrite)
        data = load_pickle(src, allow_pickle)
        if cloneofsimo.is_pt_lora(data) or cloneofsimo.is_pt_embeddings(src, data):
            return _convert_cloneofsimo(cloneofsimo.pt_lora(src, data), dst, to, family, base, allow_pickle,
                                        overwrite, naming)
        if to is not None:  # a pickled LoRA (diffusers' pytorch_lora_weights.bin) into the layout asked for
            return _convert_lora(src, dst, to, family, base, allow_pickle, overwrite, naming)
        return _pickle_to_safetensors(src, dst, data)
    if src.suffix != ".safetensors":
        raise ToolError(f"{src}: unknown file type {src.suffix!r} (expected .safetensors, .bin, .pkl, .pt, .ckpt)")
    with open_safetensors(src) as f:
        keys = list(f.keys())
        metadata = dict(f.metadata() or {})
    if any(k.startswith("model.diffusion_model.") for k in keys):
        if dst.suffix.lower() == CKPT_SUFFIX:
            return _single_file_to_ckpt(src, dst, overwrite, write_ckpt)
        return _single_file_to_folder(src, dst, family, allow_pickle, overwrite, config_dir, dtype)
    if cloneofsimo.is_safelora(keys, metadata):
        return _convert_cloneofsimo(cloneofsimo.read_safelora(src), dst, to, family, base, allow_pickle, overwrite,
                                    naming)
    if dst.suffix.lower() in (".pt", ".pth") or (len(keys) <= 2 and set(keys) <= set(EMBEDDING_KEYS)):
        return _embedding_to_pt(src, dst, overwrite)
    return _convert_lora(src, dst, to, family, base, allow_pickle, overwrite, naming)


def _check_safetensors_output(src: Path, dst: Path, overwrite: bool) -> None:
    if dst.suffix != ".safetensors":
        raise ToolError(f"{dst}: {src.name} converts to .safetensors")
    check_output(dst, overwrite)


def _pickle_to_safetensors(src: Path, dst: Path, data) -> ConvertResult:
    if _a1111_embedding(data):
        params = data["string_to_param"]
        if len(params) != 1:
            raise UnsupportedError(f"{src}: A1111 embedding with {len(params)} terms; exactly one is supported")
        meta = {"format": "pt", "name": str(data.get("name") or src.stem), "step": str(data.get("step", ""))}
        save_safetensors_atomic({"emb_params": next(iter(params.values()))}, dst, metadata=meta)
        return ConvertResult("A1111 embedding -> safetensors embedding", dst)
    if not isinstance(data, dict):
        raise UnsupportedError(f"{src} holds a {type(data).__name__}, not a dict of tensors")
    if isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    tensors, dropped = flatten_tensors(data)
    if not tensors:
        raise UnsupportedError(f"{src} holds no tensors")
    save_safetensors_atomic(_unshare(tensors), dst, metadata={"format": "pt"})
    notes = [f"left out {len(dropped)} non-tensor entries: {', '.join(dropped[:8])}"] if dropped else []
    return ConvertResult(f"pickle -> safetensors ({len(tensors)} tensors)", dst, notes)


def _embedding_to_pt(src: Path, dst: Path, overwrite: bool) -> ConvertResult:
    if dst.suffix.lower() not in (".pt", ".pth"):
        raise ToolError(f"{dst}: an embedding converts to an A1111 .pt file")
    check_output(dst, overwrite)
    with open_safetensors(src) as f:
        data = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata() or {}
    if "clip_g" in data:
        raise UnsupportedError(f"{src} is an SDXL embedding; A1111 reads it as .safetensors (there is no SDXL .pt)")
    if "t5" in data:
        raise UnsupportedError(f"{src} is a FLUX.1 embedding with T5 vectors; A1111's .pt holds one text encoder's "
                               "vectors (ComfyUI and Forge read the .safetensors file's clip_l as it is)")
    vectors = data.get("emb_params")
    if vectors is None:
        if len(data) != 1:
            raise UnsupportedError(f"{src}: not an embedding file (keys: {', '.join(list(data)[:6])})")
        vectors = next(iter(data.values()))
    if vectors.dim() == 1:
        vectors = vectors.unsqueeze(0)
    name = meta.get("name") or dst.stem
    step = meta.get("step", "")
    payload = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": vectors},
        "name": name,
        "step": int(step) if str(step).isdigit() else 0,
        "sd_checkpoint": None,
        "sd_checkpoint_name": None,
    }
    with atomic_path(dst, suffix=".pt") as tmp:
        torch.save(payload, str(tmp))
    return ConvertResult("safetensors embedding -> A1111 .pt", dst)


def _convert_lora(src: Path, dst: Path, to: str | None, family: str, base: str | None, allow_pickle: bool,
                  overwrite: bool, naming: str) -> ConvertResult:
    sd, metadata = read_tensors(src, allow_pickle)
    if family == "flux" or (family in (None, "auto") and flux_file(sd, metadata)):
        kind, written = convert_flux_lora(src, dst, sd, metadata, to, overwrite, LORA_WEIGHT_NAME)
        return ConvertResult(kind, written)
    lora = read_lora_state_dict(sd, metadata, source=str(src))
    if not lora.modules:
        raise UnsupportedError(f"{src}: no LoRA modules found, so it cannot be written as a {to or 'LoRA'} file")
    lora.require_finite()
    target = to or ("kohya" if lora.style == "diffusers" else "diffusers")
    dst = _lora_destination(dst, target, overwrite)
    fam = family if family != "auto" else lora.family
    tree = model_tree(base, fam, allow_pickle, tiny=lora.tiny and family in (None, "auto"))
    bind(lora, tree)
    lora.require_known(hint="a converted file must hold every key; is --base the model it was made for?")
    rest = {k: v for k, v in metadata.items() if k not in (ADAPTER_METADATA, "format")}
    modules = lora.modules.values()
    if target == "diffusers":
        out, meta = diffusers_state_dict(modules)
        meta.update(rest)
    else:
        out = kohya_state_dict(modules, tree.family, tree.unet_config, naming=naming)
        meta = rest if "ss_base_model_version" in rest else {**rest, **family_metadata(tree.family)}
    save_safetensors_atomic(out, dst, metadata=meta)
    return ConvertResult(f"{lora.style} LoRA -> {target} LoRA ({len(lora.modules)} modules)", dst)


def _folder_to_single_file(src: Path, dst: Path, family: str, overwrite: bool, dtype,
                           write_ckpt: bool) -> ConvertResult:
    if not dst.suffix:
        raise ToolError(f"{dst}: a diffusers folder converts to a single .safetensors file")
    check_model_output(dst, overwrite, write_ckpt)
    model = load_sd_model(str(src), family)
    write_model(model, dst, dtype, {"loraforge_source": src.name}, overwrite, write_ckpt)
    return ConvertResult(f"diffusers folder -> single file ({model.family.label})", dst)


def _single_file_to_ckpt(src: Path, dst: Path, overwrite: bool, write_ckpt: bool) -> ConvertResult:
    check_model_output(dst, overwrite, write_ckpt)
    with open_safetensors(src) as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_checkpoint_tensors(tensors, dst, write_ckpt=write_ckpt)
    return ConvertResult(f"single file -> pickle .ckpt ({len(tensors)} tensors, A1111 layout)", dst,
                         ["a .ckpt has no header: the safetensors metadata is not carried over"])


def _single_file_to_folder(src: Path, dst: Path, family: str, allow_pickle: bool, overwrite: bool,
                           config_dir: str | None, dtype) -> ConvertResult:
    if dst.suffix:
        raise ToolError(f"{dst}: a single-file checkpoint converts to a diffusers folder (a path without suffix)")
    check_output(dst, overwrite)
    model = load_sd_model(str(src), family, allow_pickle, config_dir)
    write_model(model, dst, dtype, None, overwrite)
    return ConvertResult(f"single file -> diffusers folder ({model.family.label})", dst)


# ------------------------------------------------------------------------------------------------------- cloneofsimo
def _convert_cloneofsimo(lora: cloneofsimo.CloneofsimoLora, dst: Path, to: str | None, family: str,
                         base: str | None, allow_pickle: bool, overwrite: bool, naming: str) -> ConvertResult:
    """A cloneofsimo LoRA -> kohya (default) or diffusers, placed on `base` (or the family's full-size model, then
    its embedded tiny one); its embeddings -> `<name>_emb.safetensors` beside it (the file itself when it holds only
    embeddings)."""
    target = to or "kohya"
    dst = _lora_destination(dst, target, overwrite)
    emb_dst = dst.with_name(embeddings_file_name(dst.stem)) if lora.pairs else dst
    if lora.embeddings and lora.pairs:
        check_output(emb_dst, overwrite)
    fam = family if family not in (None, "auto") else lora.guess_family()
    source = Path(lora.source).name
    notes = []
    tree = None
    if lora.pairs:
        tree, tiny, modules, placed = _place_cloneofsimo(lora, base, family, fam, allow_pickle)
        fam = tree.family
    vectors = _cloneofsimo_vectors(lora, tree) if lora.embeddings else None  # checked before anything is written
    if lora.pairs:
        meta = {**family_metadata(tree.family), "loraforge_source": f"cloneofsimo {lora.layout} {source}",
                "loraforge_alpha": "alpha = rank (cloneofsimo adds up @ down at scale 1.0)"}
        if tiny:
            meta[BASE_MODEL_KEY] = tiny_base_model(tree.family)
        if target == "diffusers":
            out, written = diffusers_state_dict(modules)
            meta.update(written)
        else:
            out = kohya_state_dict(modules, tree.family, tree.unet_config, naming=naming)
        save_safetensors_atomic(out, dst, metadata=meta)
        notes += placed + ["alpha = rank for every module: cloneofsimo has no alpha (it adds up @ down at scale 1.0), "
                           "and kohya scales by alpha / rank"]
    if vectors is not None:
        tokens = lora.embedding_tokens()
        save_embeddings(emb_dst, fam, [vectors], metadata={"loraforge_tokens": json.dumps(tokens),
                                                             "loraforge_source": source}, dtype=vectors.dtype)
        notes.append(f"embedding {''.join(tokens)} ({len(tokens)} vectors x {vectors.shape[1]}) -> {emb_dst}; its "
                     f"trigger word is the file name: write {emb_dst.stem} where cloneofsimo's prompts had "
                     f"{''.join(tokens)}")
    if not lora.pairs:
        return ConvertResult(f"cloneofsimo {lora.layout} embeddings -> embedding", dst, notes)
    n = sum(len(p) for p in lora.pairs.values())
    return ConvertResult(f"cloneofsimo {lora.layout} -> {target} LoRA ({n} modules)", dst, notes)


def _place_cloneofsimo(lora, base, family: str, fam: str, allow_pickle: bool):
    """(tree, whether it is the embedded tiny model, bound modules, notes): the first model whose modules the pairs
    fit, `base` alone when given."""
    attempts = [(False, lambda: model_tree(base, family, allow_pickle))] if base else [
        (False, lambda: model_tree(None, fam)), (True, lambda: model_tree(None, fam, tiny=True))]
    first_error = None
    for tiny, make in attempts:
        tree = make()
        try:
            modules, notes = cloneofsimo.bind(lora, tree)
        except ShapeMismatchError as e:
            first_error = first_error or e
            continue
        return tree, tiny, modules, notes + (["placed on loraforge's embedded tiny model"] if tiny else [])
    raise first_error


def _cloneofsimo_vectors(lora, tree) -> torch.Tensor:
    """The file's vectors in token order, [n, d]; d must be the width of `tree`'s text encoder when there is one."""
    tokens = lora.embedding_tokens()
    vectors = [lora.embeddings[t].reshape(1, -1) for t in tokens]
    widths = {int(v.shape[1]) for v in vectors}
    if len(widths) != 1:
        raise UnsupportedError(f"{lora.source}: the embeddings {', '.join(tokens)} differ in width ({sorted(widths)})")
    shapes = tree.modules.get("te1", {}) if tree else {}
    width = next((s[1] for p, s in shapes.items() if p.endswith("token_embedding") and s), None)
    if width is not None and widths != {width}:
        raise FamilyMismatchError(f"{lora.source}: the embeddings are {widths.pop()} wide, the model's text encoder "
                                  f"{width}: is --base (or --family) the model the file was trained on?")
    return torch.cat(vectors)


def _lora_destination(dst: Path, target: str, overwrite: bool) -> Path:
    """Where a converted LoRA goes: `dst`, or `dst/pytorch_lora_weights.safetensors` for a diffusers folder."""
    if target not in ("kohya", "diffusers"):
        raise ToolError(f"--to {target!r}: LoRA files convert to kohya or diffusers")
    if dst.suffix == "" and target == "diffusers":
        dst = dst / LORA_WEIGHT_NAME
    if dst.suffix != ".safetensors":
        raise ToolError(f"{dst}: LoRA files are written as .safetensors (or a folder for diffusers)")
    return check_output(dst, overwrite)
