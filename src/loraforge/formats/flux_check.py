"""The consumer check of a FLUX.1 LoRA file (`check_state_dict` hands FLUX files here): ComfyUI, Forge (which loads
kohya FLUX files by ComfyUI's rules; AUTOMATIC1111 itself has no FLUX) and diffusers, from the clean-room models in
`consumers.flux`, against the full-size FLUX.1 architecture (or a given transformer config)."""

from __future__ import annotations

from ..utils.tensors import nonfinite_tensors
from .check_report import CheckReport, ConsumerReport, Issue
from .consumers import comfyui, diffusers_rules
from .consumers import flux as consumer
from .consumers.keys import delta_shape, group_modules, split_key
from .flux_lora import read_flux_lora
from .lora_family import flux_lora_evidence

FORGE = "Forge"
_COMPONENT = {"unet": "transformer", "te1": "text_encoder", "te2": "text_encoder_2"}


def _comfy_report(sd, modules, total, config, text_configs, label: str, version: str) -> ConsumerReport:
    converted, res = consumer.comfy_load(sd, config, text_configs)
    rep = ConsumerReport(label, version, res.fatal is None, 0, total, list(res.not_loaded))
    if res.fatal:
        rep.reason = res.fatal
        return rep
    rep.skipped = dict(res.dropped)
    shapes = consumer.comfy_model_keys(config, text_configs)
    for name, patch in res.applied.items():
        base, rows, _ = (patch.target, None, None) if isinstance(patch.target, str) else patch.target
        shape = shapes[base] if rows is None else (rows[1],) + shapes[base][1:]
        tensors = {k[len(name) + 1:]: v for k, v in converted.items() if k.startswith(name + ".")}
        got = delta_shape(tensors)
        if got is not None and got[0] * got[1] != shape[0] * shape[1]:
            rep.skipped[name] = f"ComfyUI logs an error and leaves the weight unpatched (ΔW {got} vs {shape})"
            continue
        rep.applied += 1
    return rep


def _diffusers_report(sd, metadata, total, config, text_configs) -> ConsumerReport:
    res = consumer.diffusers_check(sd, config, text_configs)
    rep = ConsumerReport(diffusers_rules.LABEL, diffusers_rules.VERSION, res.loads, 0, total)
    if not res.loads:
        rep.reason = res.reason
        return rep
    loaded = set(res.loaded.values())
    # which diffusers layers each file module reaches (the production reader's binding), then whether diffusers
    # put a LoRA on every one of them
    reaches: dict[str, set] = {}
    for m in read_flux_lora(sd, metadata, config).modules.values():
        path = f"text_model.{m.path}" if m.part == "te1" else m.path
        for key in m.keys:
            reaches.setdefault(split_key(key)[0], set()).add((_COMPONENT[m.part], path))
    for name in group_modules(sd):
        targets = reaches.get(name)
        if targets and targets <= loaded:
            rep.applied += 1
        elif targets:
            component = next(iter(targets))[0]
            rep.skipped[name] = ("diffusers converts it without the `transformer.` prefix and its loader filters it "
                                 "out" if component == "transformer" else
                                 f"diffusers loads no {component} LoRA from this layout")
    return rep


def check_flux_state_dict(sd, metadata: dict | None = None, config: dict | None = None,
                          evidence: str = "given", text_configs=None) -> CheckReport:
    """Check a FLUX LoRA state dict against ComfyUI, Forge and diffusers. `config`: the transformer's diffusers
    config, `text_configs`: (CLIP-L config, T5 config) (None: full-size FLUX.1 [dev])."""
    issues: list[Issue] = []
    modules = group_modules(sd)
    bad = nonfinite_tensors(sd)
    if bad:
        issues.append(Issue("error", "non-finite", "NaN or infinite values: every consumer turns each weight these "
                            "modules touch into NaN (black or noise images)", list(bad)))
    unknown = read_flux_lora(sd, metadata, config).unknown
    if unknown:
        issues.append(Issue("warning", "unknown-keys", "keys that name no layer of FLUX.1", sorted(unknown)))
    total = sum(1 for m in modules.values() if m.kind != "none")
    consumers = {
        "comfyui": _comfy_report(sd, modules, total, config, text_configs, comfyui.LABEL, comfyui.VERSION),
        "a1111": _comfy_report(sd, modules, total, config, text_configs, FORGE, "(ComfyUI's FLUX rules)"),
        "diffusers": _diffusers_report(sd, metadata, total, config, text_configs),
    }
    return CheckReport("flux", evidence, {n: m.kind for n, m in modules.items()}, consumers, issues)


def is_flux_lora(sd, metadata: dict | None = None) -> str | None:
    """Evidence that a LoRA state dict is for FLUX.1 (its names, or sd-scripts' `ss_base_model_version = flux1`)."""
    evidence = flux_lora_evidence(sd)
    if evidence:
        return evidence
    if str((metadata or {}).get("ss_base_model_version", "")).startswith("flux"):
        return "metadata ss_base_model_version"
    return None
