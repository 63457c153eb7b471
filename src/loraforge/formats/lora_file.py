"""Read any LoRA-family file into modules bound to the diffusers / transformers module each one patches.

Accepted layouts (formats.md §2–§3, diffusers.md §3):

* kohya / LyCORIS: `<prefix>_<module with "_">.<suffix>` with prefixes `lora_unet`, `lora_te` (SD 1.x/2.x),
  `lora_te1` / `lora_te2` (SDXL); UNet modules in diffusers names (`lora_unet_down_blocks_1_...`), LDM names
  (`lora_unet_input_blocks_4_1_...`, SD 1.x) or SGM names (SDXL); suffixes `lora_down/up` (+ `lora_mid` Tucker),
  `hada_*` (LoHa, + `hada_t1/t2` Tucker), `lokr_*` (LoKr), `dora_scale`, `alpha`, and LyCORIS `diff` (full);
* diffusers / PEFT: `unet.<path>`, `text_encoder.<path>`, `text_encoder_2.<path>` with `lora_A/lora_B`,
  `lora.down/up`, `lora_linear_layer.down/up`, the old attention-processor `processor.to_q_lora.down`, and the alpha
  from `.alpha` keys or from the `lora_adapter_metadata` header diffusers writes.

Why our own reader: diffusers' `load_lora_weights` reads kohya LoRA/LoCon only (no LoHa/LoKr/Tucker, DoRA dropped,
formats.md §11) and silently skips what it cannot place; ComfyUI / A1111 are not libraries. Names are resolved
against the real module tree (`ModelTree`), because underscores cannot be turned back into dots by rule
(`transformer_blocks`, `to_out_0`), and transformers 5's `CLIPTextModel` has no `text_model.` level while
`CLIPTextModelWithProjection` keeps it. Keys that reach no module are collected in `LoraFile.unknown` with the reason,
never dropped silently.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..adapters import ADAPTER_LABELS, AdapterModule, delta_shape, missing_tensors
from ..errors import (
    FamilyMismatchError,
    InputNotFoundError,
    MissingKeyError,
    NonFiniteTensorError,
    PickleRefusedError,
    ShapeMismatchError,
    UnsupportedError,
)
from ..families import BASE_MODEL_KEY, FAMILY_LABELS, tiny_family
from ..utils.files import PICKLE_SUFFIXES, open_safetensors
from ..utils.tensors import describe_nonfinite, nonfinite_tensors
from .cloneofsimo import is_pt_lora, is_safelora
from .lora_family import detect_lora_family, flux_lora_evidence
from .lora_keys import DOWN, group_keys
from .model_tree import ModelTree

log = logging.getLogger(__name__)

SUPPORTED_KINDS = ("lora", "locon_tucker", "loha", "lokr", "full")
PART_LABELS = {"unet": "UNet", "te1": "text encoder 1", "te2": "text encoder 2"}


# ------------------------------------------------------------------------------------------------------- the file
@dataclass
class LoraFile:
    modules: dict[str, AdapterModule]
    unknown: dict[str, str]  # file key -> why no module uses it
    metadata: dict[str, str]
    family: str
    family_evidence: str
    style: str  # "kohya" or "diffusers"
    source: str = ""
    nonfinite: dict[str, str] = field(default_factory=dict)  # file key -> its NaN / Inf counts
    tiny: bool = False  # made for loraforge's embedded tiny model of `family` (`detect_tiny_model`)

    def by_target(self) -> dict[tuple[str, str], AdapterModule]:
        return {m.target: m for m in self.modules.values() if m.target}

    def kinds(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for m in self.modules.values():
            counts[m.kind] = counts.get(m.kind, 0) + 1
        return counts

    def unknown_lines(self, limit: int = 10) -> list[str]:
        by_reason: dict[str, list[str]] = {}
        for key, why in self.unknown.items():
            by_reason.setdefault(why, []).append(key)
        out = []
        for why, keys in by_reason.items():
            more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
            out.append(f"{why}: {', '.join(keys[:limit])}{more}")
        return out

    def require_known(self, skip_unknown: bool = False, hint: str = "pass --skip-unknown to apply the rest") -> None:
        """Raise `MissingKeyError` when keys reach no module, unless `skip_unknown` (then they are logged)."""
        if not self.unknown:
            return
        lines = self.unknown_lines()
        if not skip_unknown:
            raise MissingKeyError(
                f"{self.source or 'the LoRA'}: {len(self.unknown)} keys would not be applied ({hint}): "
                + "; ".join(lines)
            )
        log.warning("%s: %d keys not applied: %s", self.source or "LoRA", len(self.unknown), "; ".join(lines))

    def require_finite(self) -> None:
        """Raise `NonFiniteTensorError` naming the tensors when the file holds NaN or infinite values."""
        if self.nonfinite:
            raise NonFiniteTensorError(
                f"{self.source or 'the LoRA'}: {len(self.nonfinite)} tensors hold NaN or infinite values, so every "
                f"weight the file touches would become NaN (a training run that diverged): "
                f"{describe_nonfinite(self.nonfinite)}. Use another file (an earlier checkpoint of the run), or "
                "train again with a lower learning rate"
            )


def load_lora_file(path, allow_pickle: bool = False) -> LoraFile:
    """Read a .safetensors LoRA file (or, with `allow_pickle`, a .bin/.pt one in torch's weights_only mode), to
    apply it: a file with NaN / Inf values is refused (`NonFiniteTensorError`)."""
    sd, metadata = read_tensors(path, allow_pickle)
    if is_safelora(sd, metadata):
        raise UnsupportedError(_cloneofsimo_hint(path, "a safelora"))
    lora = read_lora_state_dict(sd, metadata, source=str(path))
    lora.require_finite()
    return lora


def _cloneofsimo_hint(path, what: str) -> str:
    flag = " --allow-pickle" if Path(path).suffix.lower() in PICKLE_SUFFIXES else ""
    return (f"{path} is a cloneofsimo/lora file ({what}: no module names, placed by module order); convert it once "
            f"with `loraforge convert {path} {Path(path).stem.split('.')[0]}-kohya.safetensors --to kohya{flag}` and "
            "use the kohya file")


def read_tensors(path, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no such file")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise PickleRefusedError(
                f"{path} is a pickle-based file; unpickling can run code. Pass --allow-pickle to read it "
                "(loraforge then uses torch's weights_only mode), or convert it once with `loraforge convert`"
            )
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, not a pickle, or objects weights_only refuses
            raise UnsupportedError(f"{path}: not a readable tensor file ({str(e).splitlines()[0][:200]})") from None
        data = data.get("state_dict", data) if isinstance(data, dict) else data
        if is_pt_lora(data):
            raise UnsupportedError(_cloneofsimo_hint(path, "a .pt list of up/down tensors"))
        if not isinstance(data, dict):
            raise UnsupportedError(f"{path} holds a {type(data).__name__}, not a dict of tensors")
        return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}, {}
    with open_safetensors(path) as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def read_lora_state_dict(sd: dict[str, torch.Tensor], metadata: dict | None = None, source: str = "") -> LoraFile:
    """Group a state dict into modules with normalised suffixes; not yet bound to a model (see `bind`). Tensors with
    NaN / Inf values are listed in `nonfinite` (`require_finite` refuses them)."""
    metadata = dict(metadata or {})
    flux = flux_lora_evidence(sd)
    if flux:  # FLUX files are read by `formats.flux_lora.read_flux_lora` (the tools' FLUX paths, check)
        raise UnsupportedError(
            f"{source or 'the LoRA'} is a FLUX.1 LoRA ({flux}); this reader handles SD 1.x / 2.x / SDXL files. "
            "`loraforge inspect`, `check`, `convert`, `resize`, `merge loras`, `extract`, and `merge into-model` and "
            "`sample` with a FLUX.1 model take FLUX files: pass a FLUX.1 model (or --family flux for the embedded one)"
        )
    unknown: dict[str, str] = {}
    body = {}
    for key, value in sd.items():
        if key.startswith("bundle_emb."):
            unknown[key] = "bundled embedding (only A1111 reads these; use a separate embeddings file)"
        else:
            body[key] = value
    peft_alpha = _peft_alphas(metadata)
    grouped, unknown_keys = group_keys(body)
    for key in unknown_keys:
        unknown[key] = "unknown tensor suffix"
    modules: dict[str, AdapterModule] = {}
    for name, module in grouped.items():
        if "diff_b" in module.tensors:
            del module.tensors["diff_b"]
            unknown[f"{name}.diff_b"] = "bias deltas are not applied by loraforge's tools"
            module.keys.remove(f"{name}.diff_b")
        alpha = module.tensors.pop("alpha", None)
        if alpha is not None:
            if alpha.numel() != 1:
                raise ShapeMismatchError(f"{source}: {name}.alpha has {alpha.numel()} elements; it must be one")
            module.alpha, module.alpha_tensor = float(alpha.reshape(())), alpha
        if module.alpha is None and "." in name and module.kind == "lora":
            module.alpha = peft_alpha(name, module.rank)
        problem = _incomplete(module)
        if problem:
            for key in module.keys:
                unknown[key] = problem
            continue
        modules[name] = module
    family, evidence = detect_lora_family(body, metadata)
    tiny, tiny_evidence = detect_tiny_model(body, metadata)
    if tiny:
        family, evidence = tiny, tiny_evidence
    style = "diffusers" if modules and all("." in n for n in modules) else "kohya"
    return LoraFile(modules, unknown, metadata, family, evidence, style, source, nonfinite_tensors(sd), bool(tiny))


def _incomplete(m: AdapterModule) -> str | None:
    kind = m.kind
    if kind == "none":
        return "module without adapter tensors (only alpha / dora_scale)"
    if kind not in SUPPORTED_KINDS:
        return f"{ADAPTER_LABELS.get(kind, kind)} modules are not supported by loraforge's tools"
    missing = missing_tensors(m.tensors)
    return f"incomplete module: missing {', '.join(missing)}" if missing else None


def _peft_alphas(metadata: dict):
    """alpha(module name, rank) from diffusers' `lora_adapter_metadata` (PEFT LoraConfig per part); rank when none."""
    raw = metadata.get("lora_adapter_metadata")
    config = json.loads(raw) if raw else {}

    def alpha(name: str, rank: int | None) -> float | None:
        prefix, _, rel = name.partition(".")
        if f"{prefix}.lora_alpha" not in config:
            return None  # diffusers then uses alpha = rank; None gives the same scale (1.0)
        value = config[f"{prefix}.lora_alpha"]
        for pattern, a in (config.get(f"{prefix}.alpha_pattern") or {}).items():
            if re.match(rf"(.*\.)?({pattern})$", rel):
                value = a
                break
        r = rank
        for pattern, rr in (config.get(f"{prefix}.rank_pattern") or {}).items():
            if re.match(rf"(.*\.)?({pattern})$", rel):
                r = rr
                break
        value = float(value)
        if config.get(f"{prefix}.use_rslora") and r:
            value *= float(r) ** 0.5  # rsLoRA scale alpha/√r = (alpha·√r)/r
        return value

    return alpha


# cross-attention input width of the embedded tiny models (`models.tiny`): no full-size model has these
TINY_CROSS_ATTENTION = {32: "sd15", 96: "sdxl"}


def detect_tiny_model(sd: dict, metadata: dict | None = None) -> tuple[str | None, str]:
    """(family, evidence) when a LoRA state dict was made for loraforge's embedded tiny model of that family, else
    (None, ""): the `loraforge_base_model` metadata loraforge writes, else the tiny models' cross-attention width
    (SD 2.x's tiny model has SD 1.5's width and linear `proj_in` layers)."""
    family = tiny_family(metadata)
    if family:
        return family, f"metadata {BASE_MODEL_KEY} = tiny-{family}"
    modules, _ = group_keys(sd)
    for name, m in modules.items():
        if re.search(r"attn2[._](processor[._])?to_[kv]$", name):
            shape = delta_shape(m.tensors)
            family = TINY_CROSS_ATTENTION.get(shape[1]) if shape else None
            if family is None:
                return None, ""
            if family == "sd15" and _linear_proj_in(modules):
                family = "sd2"
            return family, f"cross-attention input width {shape[1]} of the embedded tiny model ({name})"
    return None, ""


def _linear_proj_in(modules) -> bool:
    for name, m in modules.items():
        if re.search(r"proj_in$", name):
            down = m.tensors.get(DOWN)
            return down is not None and down.dim() == 2
    return False


def weak_evidence(evidence: str) -> bool:
    return evidence.startswith("default") or evidence == "metadata"


# ------------------------------------------------------------------------------------------------------- binding
def bind(lora: LoraFile, tree: ModelTree, check_shapes: bool = True) -> LoraFile:
    """Resolve every module to (part, path) in `tree`, in place. Modules that reach no module of the model go to
    `lora.unknown`. Raises `FamilyMismatchError` for a file of another family and `ShapeMismatchError` when a
    module's ΔW does not fit its weight."""
    if lora.family != tree.family and not weak_evidence(lora.family_evidence):
        raise FamilyMismatchError(
            f"{lora.source or 'the LoRA'} is an {FAMILY_LABELS[lora.family]} LoRA ({lora.family_evidence}) but the "
            f"model is {FAMILY_LABELS[tree.family]}"
        )
    seen: dict[tuple[str, str], str] = {}
    bad: list[str] = []
    for name, module in list(lora.modules.items()):
        target = tree.resolve(name)
        if target is None or target in seen:
            why = (f"no module of the {FAMILY_LABELS[tree.family]} model has this name" if target is None
                   else f"second module for {target[1]} (first: {seen[target]})")
            for key in module.keys:
                lora.unknown[key] = why
            del lora.modules[name]
            continue
        seen[target] = name
        module.part, module.path = target
        weight = tree.shape(*target)
        if check_shapes and weight is not None and not fits(module, weight):
            bad.append(f"{name} (ΔW {delta_shape(module.tensors)} vs weight {tuple(weight)})")
    if bad:
        more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        raise ShapeMismatchError(
            f"{lora.source or 'the LoRA'}: {len(bad)} modules do not fit the {FAMILY_LABELS[tree.family]} model's "
            f"weights: {'; '.join(bad[:5])}{more}. Is this LoRA for another model?"
        )
    return lora


def fits(module: AdapterModule, weight_shape) -> bool:
    weight_shape = tuple(weight_shape)
    got = delta_shape(module.tensors)
    if got is None or len(weight_shape) < 2:
        return False
    n_in = 1
    for s in weight_shape[1:]:
        n_in *= s
    if got != (weight_shape[0], n_in):
        return False
    dora = module.tensors.get("dora_scale")
    return dora is None or dora.numel() in (weight_shape[0], weight_shape[1])


def load_bound(path, tree: ModelTree, allow_pickle: bool = False, skip_unknown: bool = False) -> LoraFile:
    """`load_lora_file` + `bind` + `require_known`: a file ready to apply to `tree`'s model."""
    lora = bind(load_lora_file(path, allow_pickle), tree)
    lora.require_known(skip_unknown)
    if not lora.modules:
        raise MissingKeyError(f"{path}: no module of this file applies to the model")
    return lora


__all__ = [
    "LoraFile",
    "ModelTree",
    "bind",
    "detect_lora_family",
    "load_bound",
    "load_lora_file",
    "read_lora_state_dict",
    "read_tensors",
]
