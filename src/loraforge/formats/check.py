"""Consumer-compatibility check of a LoRA-family file: will ComfyUI v0.19.3, AUTOMATIC1111 v1.10.1 and diffusers
0.42.1 load it, which modules does each apply, and is the file broken in a way one of them punishes?

The verdicts come from the clean-room consumer models in `loraforge.formats.consumers` (key maps, acceptance rules,
merge math) and from diffusers' own conversion code; no model is built beyond the family's meta-device shape tables.

    report = check_file("my_lora.safetensors")
    print(report.summary())   # ComfyUI 282/282 modules, A1111 282/282, diffusers loads
    print(report)             # per consumer, unmatched keys by name, errors and warnings
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..adapters import ADAPTER_LABELS, AdapterModule, module_delta
from ..errors import ShapeMismatchError, UnsupportedError
from ..families import FAMILIES, FAMILY_NAMES
from ..families.detect import folder_architecture
from ..families.flux import FLUX
from ..models.tiny import tiny_model_dir
from ..utils.tensors import nonfinite_tensors
from .consumers import a1111, comfyui, diffusers_rules
from .consumers.keys import (
    KOHYA_PREFIXES,
    ConsumerMergeError,
    PEFT_PREFIXES,
    FileModule,
    _prod,
    adapter_kind,
    delta_shape,
    dora_axis,
    group_modules,
    lora_pair,
)
from .consumers.tables import family_of, model_tables_key
from .check_report import CONSUMERS, CheckReport, ConsumerReport, Issue
from .file_kind import require_kind
from .flux_check import check_flux_state_dict, is_flux_lora
from .lora_family import detect_family, metadata_family
from .lora_file import detect_tiny_model, read_tensors

_FACTORED = ("lora", "locon_tucker", "loha", "lokr")


# ---------------------------------------------------------------------------------------------------------- checks
def _meta(tensors: dict) -> dict:
    """The module's tensors with everything but scalars on the meta device (shape-only merges)."""
    return {
        s: v if s in ("alpha", "scale") or v.numel() == 1 else torch.empty(v.shape, dtype=torch.float32, device="meta")
        for s, v in tensors.items()
    }


_MERGE_CACHE: dict = {}


def _try_merge(fn, shape, tensors) -> str | None:
    """Run a consumer's merge on meta tensors; the error it would hit, or None. Cached per shape signature (the
    outcome depends only on shapes and on which tensors are present)."""
    signature = (fn, tuple(shape), tuple(sorted((s, tuple(v.shape)) for s, v in tensors.items())))
    if signature not in _MERGE_CACHE:
        _MERGE_CACHE[signature] = _merge_error(fn, shape, tensors)
    return _MERGE_CACHE[signature]


def _merge_error(fn, shape, tensors) -> str | None:
    try:
        out = fn(torch.empty(shape, device="meta"), _meta(tensors))
    except (ConsumerMergeError, RuntimeError, KeyError, IndexError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    except NotImplementedError:
        return None  # recognised adapter whose math is not modelled: assume it applies
    return None if tuple(out.shape) == tuple(shape) else f"result {tuple(out.shape)} does not fit {tuple(shape)}"


def _comfy_target_shape(family: str, module: str):
    target = comfyui.key_map(family).get(module)
    return comfyui.model_keys(family).get(target) if target else None


def _a1111_target_shape(family: str, module: str):
    _, layer = a1111.resolve(module, family)
    if layer is None:
        return None
    kind, shape = a1111.layers(family)[layer]
    return (shape[0] // 3, shape[1]) if kind == "mha" else shape  # q/k/v: their slice of in_proj_weight


def _module_issues(modules: dict[str, FileModule], family: str, issues: list[Issue]) -> None:
    grouped: dict[tuple[str, str, str], list[str]] = {}

    def flag(severity, code, message, name):
        grouped.setdefault((severity, code, message), []).append(name)

    for name, m in modules.items():
        if m.unknown:
            for key in m.unknown:
                flag("error", "unknown-suffix", "tensor suffixes no consumer reads", key)
        if "." in name:
            peft = name.startswith(PEFT_PREFIXES) or (lora_pair(m.tensors) or ("",))[0] != "lora_up.weight"
            if peft:
                flag("error", "peft-style-keys", "PEFT/diffusers-style keys in a user-facing file: A1111 drops them "
                     "all and ComfyUI drops every attention to_q/k/v/out (write kohya names)", name)
            else:
                flag("error", "dotted-module-name", "module names contain '.': A1111 splits keys on the first '.' "
                     "(unmatched keys, or an AssertionError that loses the whole file)", name)
        elif not name.startswith(KOHYA_PREFIXES) and name != "bundle_emb":
            flag("warning", "non-kohya-prefix", "module names without a lora_unet_/lora_te*_ prefix", name)
        kind = m.kind
        if kind == "none":
            if m.tensors:  # (a module made only of unknown keys is reported above)
                flag("error", "incomplete-module", "modules without adapter tensors (only alpha / dora_scale)", name)
            continue
        if kind in _FACTORED:
            alpha = m.tensors.get("alpha")
            if alpha is None:
                flag("error", "alpha-missing", "no alpha: every consumer uses scale 1.0 (alpha = rank); always "
                     "write a 0-dim alpha", name)
            elif alpha.dim() != 0:
                bad = alpha.numel() != 1
                flag("error", "alpha-not-0-dim", "alpha is not a 0-dim tensor" + (
                    " (several elements: ComfyUI and A1111 fail to load the file)" if bad else ""), name)
            elif float(alpha) == 0.0:
                flag("warning", "alpha-zero", "alpha is 0: consumers scale ΔW by 0 (LyCORIS trains with alpha=rank)",
                     name)
            pair = lora_pair(m.tensors)
            if pair and pair[0] != "lora_up.weight" and "." not in name:
                flag("warning", "lora-A-B-names", "lora_A/lora_B under kohya names: A1111 drops alpha (scale 1.0) "
                     "and diffusers refuses the file", name)
        target = _comfy_target_shape(family, name) or _a1111_target_shape(family, name)
        if target is not None:
            got = delta_shape(m.tensors)
            if got is not None and (got[0] != target[0] or got[1] != _prod(target[1:])):
                flag("error", "shape-mismatch", f"ΔW shape does not fit the {family_of(family)} weight", name)
        dora = m.tensors.get("dora_scale")
        if dora is not None and (target is not None or dora.dim() <= 1):
            axis = dora_axis(dora, target or ())
            if axis == "1d":
                flag("error", "dora-scale-1d", "1-D dora_scale: ComfyUI and A1111 broadcast it wrongly (write "
                     "[out,1,...] or [1,in,...])", name)
            elif axis == "bad":
                flag("error", "dora-scale-shape", "dora_scale shape fits neither [out,1,...] nor [1,in,...]", name)
            elif axis == "output":
                flag("warning", "dora-output-axis", "output-axis DoRA: ComfyUI normalises by ‖W‖ instead of "
                     "‖W+ΔW‖ and A1111 has no output axis (both give wrong weights); diffusers drops dora_scale",
                     name)
    for (severity, code, message), names in grouped.items():
        issues.append(Issue(severity, code, message, sorted(names)))


def _comfy_report(sd, modules, family, total) -> ConsumerReport:
    res = comfyui.load(sd, family)
    rep = ConsumerReport(comfyui.LABEL, comfyui.VERSION, res.fatal is None, 0, total, list(res.not_loaded))
    if res.fatal:
        rep.reason = res.fatal
        return rep
    for name, why in res.dropped.items():
        rep.skipped[name] = why
    for name, patch in res.applied.items():
        m = modules.get(name)
        shape = comfyui.model_keys(family)[patch.target]
        if m is None:
            rep.applied += 1
            continue
        err = _try_merge(comfyui.merged_weight, shape, m.tensors)
        if err:
            rep.skipped[name] = f"ComfyUI logs an error and leaves the weight unpatched ({err})"
            continue
        rep.applied += 1
        _dora_wrong(rep, m, shape, "ComfyUI normalises output-axis DoRA by ‖W‖, not ‖W+ΔW‖ (PR #15458)")
    return rep


def _dora_wrong(rep: ConsumerReport, m: FileModule, shape, why: str) -> None:
    dora = m.tensors.get("dora_scale")
    if dora is not None:
        axis = dora_axis(dora, shape)
        if axis == "output":
            rep.wrong[m.name] = why
        elif axis in ("1d", "bad"):
            rep.wrong[m.name] = "dora_scale shape is broadcast against the weight norm (wrong weights)"


def _a1111_report(sd, modules, family, total) -> ConsumerReport:
    res = a1111.load(sd, family)
    rep = ConsumerReport(a1111.LABEL, a1111.VERSION, res.fatal is None, 0, total, list(res.unmatched))
    if res.fatal:
        rep.reason = res.fatal
        return rep
    for name, m in modules.items():
        if m.kind == "none":
            continue
        if "." in name:
            continue  # a dotted name never reaches a layer as one module (A1111 cuts it at the first ".")
        if name in res.skipped:
            rep.skipped[name] = res.skipped[name]
            continue
        if name not in res.applied:
            continue
        shape = _a1111_target_shape(family, name)
        err = _try_merge(a1111.merged_weight, shape, m.tensors) if shape else None
        if err:
            rep.skipped[name] = f"A1111 skips the layer ({err})"
            continue
        rep.applied += 1
        _dora_wrong(rep, m, shape, "A1111 1.10.1 has no output-axis DoRA: [out,1] broadcasts against the column norm")
        pair, alpha = lora_pair(m.tensors), m.tensors.get("alpha")
        if pair and pair[0] == "lora_B.weight" and alpha is not None and pair[1] in m.tensors:
            if alpha.numel() == 1 and float(alpha) != m.tensors[pair[1]].shape[0]:
                rep.wrong[name] = "lora_A/lora_B names: A1111 drops alpha and applies scale 1.0"
    return rep


def _diffusers_report(sd, modules, family, total) -> ConsumerReport:
    res = diffusers_rules.check(sd, family)
    rep = ConsumerReport(diffusers_rules.LABEL, diffusers_rules.VERSION, res.loads, len(res.loaded), total)
    if not res.loads:
        rep.reason, rep.detail = res.reason, res.detail
        if res.reason and res.reason.startswith("cannot load"):
            rep.reason += " (use ComfyUI or A1111)"
        return rep
    rep.skipped = dict(res.dropped)
    for name in res.loaded:
        if modules.get(name) is not None and modules[name].tensors.get("dora_scale") is not None:
            rep.wrong[name] = "dora_scale is dropped: loaded as plain LoRA"
    return rep


def check_state_dict(
    sd: dict[str, torch.Tensor],
    family: str | None = None,
    metadata: dict | None = None,
    *,
    unet_config: dict | None = None,
    text_encoder_configs: list[dict] | None = None,
) -> CheckReport:
    """Check a LoRA-family state dict against ComfyUI, A1111 and diffusers for `family` (detected when None).

    By default the file is checked against the family's full-size architecture, or, when no family is given and the
    file was made for an embedded tiny model (`lora_file.detect_tiny_model`: metadata, else widths), against that
    model's. Pass the actual model's diffusers UNet config (and its text-encoder configs, in order) to check against
    that architecture instead, e.g. what a run on a re-shaped model produced; ComfyUI's unet_config is derived from
    it as ComfyUI would."""
    # FLUX.1 (family "flux"; lead: the registry's Family("flux") makes `family in FAMILIES` true after the merge)
    if family == FLUX or (family is None and is_flux_lora(sd, metadata)):
        return check_flux_state_dict(sd, metadata, unet_config,
                                     "given" if family else is_flux_lora(sd, metadata) or "given",
                                     tuple(text_encoder_configs) if text_encoder_configs else None)
    issues: list[Issue] = []
    tiny = detect_tiny_model(sd, metadata) if unet_config is None else (None, "")
    if tiny[0] and family is None:  # a LoRA of the embedded tiny model: check against that model
        family, evidence = tiny
        arch = folder_architecture(tiny_model_dir(family))
        unet_config, text_encoder_configs = arch["unet_config"], arch["text_encoder_configs"]
        evidence = evidence.replace(" of the embedded tiny model", "") + ", checked against the embedded tiny model"
    elif family is None:
        family, evidence = detect_family(sd, metadata)
        claimed = metadata_family(metadata)
        if claimed and claimed != family and evidence != "metadata":
            issues.append(Issue("warning", "family-metadata", f"metadata says {claimed}, keys say {family}"))
    else:
        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; expected one of {FAMILY_NAMES}")
        evidence = "given"
    tables = family
    if unet_config is not None:
        tables = model_tables_key(family, unet_config, text_encoder_configs)
        if not tiny[0]:
            evidence += ", checked against the model's own architecture"
    body = {k: v for k, v in sd.items() if not k.startswith("bundle_emb.")}
    if len(body) != len(sd):
        issues.append(Issue("warning", "bundled-embeddings", "bundled embeddings (bundle_emb.*): only A1111 loads "
                            "them; ship embeddings as separate files"))
    modules = group_modules(body)
    bad = nonfinite_tensors(sd)
    if bad:
        issues.append(Issue("error", "non-finite", "NaN or infinite values: every consumer turns each weight these "
                            "modules touch into NaN (black or noise images)", list(bad)))
    _module_issues(modules, tables, issues)
    total = sum(1 for m in modules.values() if m.kind != "none")
    consumers = {
        "comfyui": _comfy_report(body, modules, tables, total),
        "a1111": _a1111_report(sd, modules, tables, total),
        "diffusers": _diffusers_report(body, modules, tables, total),
    }
    return CheckReport(family, evidence, {n: m.kind for n, m in modules.items()}, consumers, issues)


def check_file(path: str | Path, family: str | None = None, **architecture) -> CheckReport:
    """`check_state_dict` on a .safetensors file (its header metadata is used for family hints). Never unpickles.
    `architecture` (`unet_config=`, `text_encoder_configs=`) checks against a model's own architecture instead of the
    full-size family. A missing, pickled or unreadable file raises a `LoraforgeError` naming it."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise UnsupportedError(
            f"{path}: only .safetensors files are checked (pickled .pt/.ckpt/.bin files are never loaded); convert "
            f"it first: loraforge convert {path} {path.with_suffix('.safetensors')} --allow-pickle"
        )
    require_kind(path, ("lora",), "check", UnsupportedError)
    sd, metadata = read_tensors(path)
    return check_state_dict(sd, family, metadata, **architecture)


def consumer_merged_delta(consumer: str, W: torch.Tensor, tensors: dict, strength: float = 1.0) -> torch.Tensor:
    """ΔW = merged − W that `consumer` ("comfyui", "a1111", "diffusers") computes for one module.

    `tensors` maps tensor suffixes (`lora_up.weight`, `alpha`, `hada_w1_a`, `dora_scale`, ...) to tensors. Raises
    `ConsumerMergeError` when the consumer cannot apply the module (it would leave the weight unpatched).
    """
    W = W.detach().float()
    if consumer == "comfyui":
        return comfyui.merged_weight(W, tensors, strength) - W
    if consumer == "a1111":
        return a1111.merged_weight(W, tensors, strength) - W
    if consumer == "diffusers":
        return _diffusers_delta(W, tensors, strength)
    raise ValueError(f"unknown consumer {consumer!r}; expected one of {CONSUMERS}")


def _diffusers_delta(W: torch.Tensor, tensors: dict, strength: float) -> torch.Tensor:
    """PEFT LoRA as diffusers loads a kohya module: alpha/rank · up @ down (`adapters.module_delta`), `dora_scale`
    ignored."""
    if adapter_kind(tensors) != "lora" or "lora_up.weight" not in tensors:
        raise ConsumerMergeError(f"diffusers cannot load a {ADAPTER_LABELS[adapter_kind(tensors)]} module")
    alpha = tensors.get("alpha")
    module = AdapterModule("", {k: tensors[k] for k in ("lora_down.weight", "lora_up.weight")},
                           float(alpha) if alpha is not None else None)
    try:
        return strength * module_delta(module, W.shape)
    except ShapeMismatchError as e:
        raise ConsumerMergeError(str(e)) from None


__all__ = [
    "CheckReport",
    "ConsumerReport",
    "Issue",
    "check_file",
    "check_state_dict",
    "consumer_merged_delta",
    "detect_family",
]
