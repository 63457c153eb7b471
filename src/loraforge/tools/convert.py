"""`loraforge convert`: change a file's layout without changing a single weight.

* pickle -> safetensors: `.bin` / `.pkl` / `.pt` / `.pth` / `.ckpt` (diffusers' `pytorch_lora_weights.bin`, accelerate's
  `custom_checkpoint_0.pkl`, original `.ckpt` checkpoints) are opened only with `allow_pickle`, and then with torch's
  `weights_only` loader (no code runs). The tensors keep their keys and dtypes (a `.ckpt`'s `state_dict` is
  unwrapped); anything that is not a tensor is listed and left out (harrywang's converter, seed-practices.md §14);
* A1111 `.pt` embeddings (`string_to_param`) <-> safetensors `{"emb_params": [n, d]}` (SD 1.x / 2.x);
* LoRA: kohya <-> diffusers (`formats.lora_write`; names resolved against `base`, or the family's full-size model, or
  the embedded tiny model a file was made for); a pickled LoRA with `to` goes straight into that layout;
* checkpoint: single original-layout `.safetensors` <-> diffusers folder (`formats.single_file`, SD 1.x / 2.x / SDXL).

Every output is written atomically and never over an existing path without `overwrite`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InputNotFoundError, PickleRefusedError, ToolError, UnsupportedError
from ..formats.kohya import kohya_state_dict
from ..formats.lora_file import bind, read_lora_state_dict, read_tensors
from ..formats.lora_write import ADAPTER_METADATA, diffusers_state_dict
from ..utils.files import PICKLE_SUFFIXES, atomic_path, open_safetensors, save_safetensors_atomic
from .common import check_output, family_metadata, load_sd_model, model_tree
from .merge import write_model

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
EMBEDDING_KEYS = ("emb_params", "clip_l", "clip_g", "clip_h")


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
            config_dir: str | None = None, dtype=None) -> ConvertResult:
    """Convert `src` into `dst`; the kind of conversion follows from the files (or `to`: "kohya" / "diffusers" for
    LoRA files)."""
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise InputNotFoundError(f"{src}: no such file or folder")
    if src.is_dir():
        if (src / "model_index.json").is_file():
            return _folder_to_single_file(src, dst, family, overwrite, dtype)
        if (src / LORA_WEIGHT_NAME).is_file():
            src = src / LORA_WEIGHT_NAME
        else:
            raise ToolError(f"{src} is neither a diffusers model folder nor a diffusers LoRA folder")
    if src.suffix.lower() in PICKLE_SUFFIXES:
        if to is not None:  # a pickled LoRA (diffusers' pytorch_lora_weights.bin) into the layout asked for
            return _convert_lora(src, dst, to, family, base, allow_pickle, overwrite, naming)
        return _pickle_to_safetensors(src, dst, allow_pickle, overwrite)
    if src.suffix != ".safetensors":
        raise ToolError(f"{src}: unknown file type {src.suffix!r} (expected .safetensors, .bin, .pkl, .pt, .ckpt)")
    with open_safetensors(src) as f:
        keys = list(f.keys())
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return _single_file_to_folder(src, dst, family, allow_pickle, overwrite, config_dir, dtype)
    if dst.suffix.lower() in (".pt", ".pth") or (len(keys) <= 2 and set(keys) <= set(EMBEDDING_KEYS)):
        return _embedding_to_pt(src, dst, overwrite)
    return _convert_lora(src, dst, to, family, base, allow_pickle, overwrite, naming)


def _pickle_to_safetensors(src: Path, dst: Path, allow_pickle: bool, overwrite: bool) -> ConvertResult:
    if dst.suffix != ".safetensors":
        raise ToolError(f"{dst}: a pickle file converts to .safetensors")
    check_output(dst, overwrite)
    data = load_pickle(src, allow_pickle)
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
    lora = read_lora_state_dict(sd, metadata, source=str(src))
    if not lora.modules:
        raise UnsupportedError(f"{src}: no LoRA modules found, so it cannot be written as a {to or 'LoRA'} file")
    lora.require_finite()
    target = to or ("kohya" if lora.style == "diffusers" else "diffusers")
    if target not in ("kohya", "diffusers"):
        raise ToolError(f"--to {target!r}: LoRA files convert to kohya or diffusers")
    if dst.suffix == "" and target == "diffusers":
        dst = dst / LORA_WEIGHT_NAME
    if dst.suffix != ".safetensors":
        raise ToolError(f"{dst}: LoRA files are written as .safetensors (or a folder for diffusers)")
    check_output(dst, overwrite)
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


def _folder_to_single_file(src: Path, dst: Path, family: str, overwrite: bool, dtype) -> ConvertResult:
    if dst.suffix != ".safetensors":
        raise ToolError(f"{dst}: a diffusers folder converts to a single .safetensors file")
    check_output(dst, overwrite)
    model = load_sd_model(str(src), family)
    write_model(model, dst, dtype, {"loraforge_source": src.name}, overwrite)
    return ConvertResult(f"diffusers folder -> single file ({model.family.label})", dst)


def _single_file_to_folder(src: Path, dst: Path, family: str, allow_pickle: bool, overwrite: bool,
                           config_dir: str | None, dtype) -> ConvertResult:
    if dst.suffix:
        raise ToolError(f"{dst}: a single-file checkpoint converts to a diffusers folder (a path without suffix)")
    check_output(dst, overwrite)
    model = load_sd_model(str(src), family, allow_pickle, config_dir)
    write_model(model, dst, dtype, None, overwrite)
    return ConvertResult(f"single file -> diffusers folder ({model.family.label})", dst)
