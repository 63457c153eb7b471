"""`loraforge inspect FILE`: what a file is and what is in it, without a model.

LoRA-family files: layout (kohya / diffusers), family with its evidence, algorithms (LoRA, LoCon conv modules,
Tucker, LoHa, LoKr, DoRA), ranks, alphas, modules per part, keys no tool would apply, the training metadata, and the
`loraforge check` line (ComfyUI / A1111 / diffusers); cloneofsimo/lora files (safelora, `.pt` list): groups, target
classes, ranks, embeddings and the command that converts them. Checkpoints (original single file or diffusers
folder): family and tensors per component. Embeddings: vectors and width per text encoder. Pickle-based files are
opened only with `allow_pickle` (torch's weights_only loader).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..adapters import ADAPTER_LABELS
from ..errors import InputNotFoundError
from ..families.detect import detect_family_from_folder, family_from_single_file_type
from ..formats import cloneofsimo
from ..formats.check import check_state_dict
from ..formats.lora_file import PART_LABELS, read_lora_state_dict
from ..utils.files import PICKLE_SUFFIXES, open_safetensors
from ..utils.tensors import describe_nonfinite
from .convert import flatten_tensors, load_pickle
from .flux_files import flux_file
from .flux_files import inspect_lines as flux_inspect_lines

SHOWN_METADATA = (
    "ss_output_name", "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args",
    "ss_base_model_version", "ss_sd_model_name", "ss_resolution", "ss_steps", "ss_epoch", "ss_num_train_images",
    "ss_learning_rate", "ss_optimizer", "ss_training_comment", "modelspec.title", "modelspec.architecture",
)  # fmt: skip
CHECKPOINT_PREFIXES = {
    "model.diffusion_model.": "UNet", "first_stage_model.": "VAE", "cond_stage_model.": "text encoder",
    "conditioner.embedders.0.": "text encoder 1", "conditioner.embedders.1.": "text encoder 2",
}  # fmt: skip


@dataclass
class InspectReport:
    path: Path
    kind: str
    lines: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(self.lines)


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _counts(counter: Counter) -> str:
    return ", ".join(f"{k:g} ({n})" if isinstance(k, float) else f"{k} ({n})" for k, n in sorted(counter.items()))


def part_of(name: str) -> str:
    if name.startswith(("lora_te2_", "text_encoder_2.")):
        return "te2"
    if name.startswith(("lora_te_", "lora_te1_", "text_encoder.")):
        return "te1"
    if name.startswith(("lora_unet_", "lycoris_", "unet.", "down_blocks", "mid_block", "up_blocks")):
        return "unet"
    return "other"


def inspect_file(path, allow_pickle: bool = False, all_metadata: bool = False) -> InspectReport:
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        lora = path / "pytorch_lora_weights.safetensors"
        if (path / "model_index.json").is_file():
            return _inspect_folder(path)
        if lora.is_file():
            return inspect_file(lora, allow_pickle, all_metadata)
        return InspectReport(path, "folder", [f"{path}: not a diffusers model or LoRA folder"])
    size = path.stat().st_size
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            return InspectReport(path, "pickle", [
                f"file: {path.name} ({human_size(size)})",
                "kind: pickle-based file, not opened (unpickling can run code; pass --allow-pickle to read it "
                "with torch's weights_only loader, or convert it with `loraforge convert`)",
            ])

        data = load_pickle(path, True)
        if cloneofsimo.is_pt_lora(data) or cloneofsimo.is_pt_embeddings(path, data):
            report = _inspect_cloneofsimo(path, cloneofsimo.pt_lora(path, data))
            report.lines.insert(0, f"file: {path.name} ({human_size(size)}, {len(data)} tensors)")
            return report
        if isinstance(data, dict) and "string_to_param" in data:
            tensors = {"emb_params": next(iter(data["string_to_param"].values()))}
        else:
            data = data.get("state_dict", data) if isinstance(data, dict) else {}
            tensors, _ = flatten_tensors(data)
        metadata = {}
    else:
        with open_safetensors(path) as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            metadata = dict(f.metadata() or {})
    dtypes = Counter(str(t.dtype).removeprefix("torch.") for t in tensors.values())
    head = f"file: {path.name} ({human_size(size)}, {len(tensors)} tensors, {', '.join(sorted(dtypes))})"
    if any(k.startswith("model.diffusion_model.") for k in tensors):
        report = _inspect_checkpoint(path, tensors)
    elif cloneofsimo.is_safelora(tensors, metadata):
        report = _inspect_cloneofsimo(path, cloneofsimo.read_safelora(path))
        if not all_metadata:  # its metadata (targets, ranks, <embed> flags) is what the report shows
            report.lines.insert(0, head)
            return report
    elif tensors and set(tensors) <= {"emb_params", "clip_l", "clip_g", "clip_h"}:
        report = _inspect_embedding(path, tensors)
    else:
        report = _inspect_lora(path, tensors, metadata)
    report.lines.insert(0, head)
    report.lines += _metadata_lines(metadata, all_metadata)
    return report


def _inspect_lora(path: Path, sd: dict, metadata: dict) -> InspectReport:
    flux = flux_file(sd, metadata)
    if flux:
        return InspectReport(path, "lora", flux_inspect_lines(sd, metadata, flux))
    lora = read_lora_state_dict(sd, metadata, source=str(path))
    if not lora.modules:
        return InspectReport(path, "unknown", ["kind: no LoRA modules, checkpoint or embedding found"]
                             + [f"unused keys: {line}" for line in lora.unknown_lines(5)])
    mods = list(lora.modules.values())
    kinds = Counter(ADAPTER_LABELS.get(m.kind, m.kind) for m in mods)
    conv = sum(1 for m in mods if m.kind == "lora" and m.is_conv)
    dora = sum(1 for m in mods if "dora_scale" in m.tensors)
    algo = _counts(kinds) + (f"; {conv} conv (LoCon)" if conv else "") + (f"; {dora} with DoRA" if dora else "")
    parts = Counter(part_of(m.name) for m in mods)
    lines = [
        f"kind: LoRA-family file, {lora.style} layout",
        f"family: {lora.family} ({lora.family_evidence})",
        f"algo: {algo}",
        f"ranks: {_counts(Counter(m.rank for m in mods if m.rank is not None)) or '-'}",
        f"alphas: {_counts(Counter(m.alpha for m in mods if m.alpha is not None)) or 'none stored (scale 1.0)'}",
        "modules: " + ", ".join(f"{PART_LABELS.get(p, p)} {parts[p]}" for p in ("unet", "te1", "te2", "other")
                                if parts[p]),
        "unused keys: " + ("none" if not lora.unknown else f"{len(lora.unknown)}: " + "; ".join(
            lora.unknown_lines(5))),
        "values: " + ("all finite" if not lora.nonfinite else (
            f"BROKEN, {len(lora.nonfinite)} tensors hold NaN/Inf (every weight they touch becomes NaN): "
            + describe_nonfinite(lora.nonfinite))),
    ]
    try:
        report = check_state_dict(sd, None, metadata)
        lines.append(f"check: {report.summary()}" + (f" ({len(report.errors)} errors, run `loraforge check`)"
                                                      if report.errors else ""))
    except Exception as e:  # the check is informative; a file it cannot model is still inspected
        lines.append(f"check: not available ({type(e).__name__}: {e})")
    return InspectReport(path, "lora", lines)


def _inspect_cloneofsimo(path: Path, lora: cloneofsimo.CloneofsimoLora) -> InspectReport:
    groups = []
    for group, pairs in lora.pairs.items():
        targets = lora.targets.get(group)
        what = ", ".join(targets) if targets else "not stored; convert tries the default sets"
        groups.append(f"{group} {len(pairs)} (targets: {what})")
    ranks = Counter(r for rs in lora.ranks().values() for r in rs)
    tensors = [t for pairs in lora.pairs.values() for pair in pairs for t in pair] + list(lora.embeddings.values())
    broken = sum(1 for t in tensors if not t.isfinite().all())
    embeds = lora.embedding_tokens()
    width = {int(lora.embeddings[t].shape[-1]) for t in embeds}
    layout = "safelora .safetensors" if lora.layout == "safelora" else ".pt list of up/down tensors"
    flag = " --allow-pickle" if lora.layout == "pt" else ""
    name = path.stem.removesuffix(".text_encoder").removesuffix(".ti")
    out = f"{name}-kohya.safetensors --to kohya" if lora.pairs else f"{name}_emb.safetensors"
    lines = [
        f"kind: cloneofsimo/lora (lora_diffusion) file, {layout}; no module names (placed by module order)",
        f"family: {lora.guess_family()} (from the tensor widths; cloneofsimo trained SD 1.x / 2.x)",
        "modules: " + ("; ".join(groups) or "none"),
        f"ranks: {_counts(ranks) or '-'}",
        "alphas: none (cloneofsimo adds up @ down at scale 1.0; converted to kohya, alpha = rank)",
        "embeddings: " + (f"{''.join(embeds)} ({len(embeds)} vectors x {width.pop()})" if embeds else "none"),
        "values: " + ("all finite" if not broken else f"BROKEN, {broken} tensors hold NaN/Inf"),
        f"convert: loraforge convert {path.name} {out}{flag}" + ("  (also writes the embedding file)"
                                                                  if embeds and lora.pairs else ""),
    ]
    return InspectReport(path, "cloneofsimo", lines)


def _inspect_checkpoint(path: Path, sd: dict) -> InspectReport:
    try:
        from diffusers.loaders.single_file_utils import infer_diffusers_model_type

        family = family_from_single_file_type(infer_diffusers_model_type(sd)) or "unknown"
    except Exception:
        family = "unknown"
    per: dict[str, list[int]] = {}
    for key, t in sd.items():
        label = next((v for p, v in CHECKPOINT_PREFIXES.items() if key.startswith(p)), "other")
        entry = per.setdefault(label, [0, 0])
        entry[0] += 1
        entry[1] += t.numel()
    comps = ", ".join(f"{k} {n} tensors / {p / 1e6:.1f} M params" for k, (n, p) in per.items())
    return InspectReport(path, "checkpoint", ["kind: checkpoint, original single-file layout (A1111 / ComfyUI)",
                                              f"family: {family}", f"components: {comps}"])


def _inspect_embedding(path: Path, sd: dict) -> InspectReport:
    widths = {768: "SD 1.x", 1024: "SD 2.x"}
    parts = []
    for key, t in sd.items():
        t2 = t.unsqueeze(0) if t.dim() == 1 else t
        parts.append(f"{key} {t2.shape[0]} vectors × {t2.shape[-1]}")
    family = "SDXL" if "clip_g" in sd else widths.get(next(iter(sd.values())).shape[-1], "unknown (not a full-size width)")
    return InspectReport(path, "embedding", [f"kind: textual-inversion embedding ({family})",
                                             f"vectors: {', '.join(parts)}", f"token: {path.stem} (the file name)"])


def _inspect_folder(path: Path) -> InspectReport:
    lines = ["kind: diffusers model folder", f"family: {detect_family_from_folder(path) or 'unknown'}"]
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):
        files = sorted(sub.glob("*.safetensors"))
        if not files:
            continue
        count = params = 0
        for file in files:
            with open_safetensors(file) as f:
                for k in f.keys():
                    count += 1
                    shape = f.get_slice(k).get_shape()
                    n = 1
                    for s in shape:
                        n *= s
                    params += n
        lines.append(f"{sub.name}: {count} tensors / {params / 1e6:.1f} M params")
    return InspectReport(path, "folder", lines)


def _metadata_lines(metadata: dict, everything: bool) -> list[str]:
    meta = {k: v for k, v in metadata.items() if k != "format"}
    if not meta:
        return ["metadata: none"]
    out = ["metadata:"]
    shown = meta if everything else {k: meta[k] for k in SHOWN_METADATA if k in meta}
    shown.update({k: v for k, v in meta.items() if k.startswith("loraforge_")})
    if "lora_adapter_metadata" in meta and not everything:
        cfg = json.loads(meta["lora_adapter_metadata"])
        shown["lora_adapter_metadata"] = ", ".join(
            f"{k}={cfg[k]}" for k in sorted(cfg) if k.split(".", 1)[-1] in ("r", "lora_alpha"))
    for k, v in shown.items():
        v = str(v)
        out.append(f"  {k}: {v if len(v) <= 200 else v[:200] + '…'}")
    hidden = len(meta) - len(shown)
    if hidden > 0:
        out.append(f"  (+{hidden} more keys; --all-metadata shows them)")
    return out
