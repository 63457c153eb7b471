"""Whether diffusers 0.42.1 `load_lora_weights` accepts a file for SD 1.x / SD 2.x / SDXL, and which modules it keeps.

The file goes through diffusers' own installed code as far as it is pure dict work:
`StableDiffusion(XL)LoraLoaderMixin.lora_state_dict` (drops `dora_scale` with a warning, maps SGM block names with the
UNet config, converts kohya keys with `_convert_non_diffusers_lora_to_diffusers` and raises on anything it cannot
rename: LoHa, LoKr, Tucker `lora_mid`, `lora_A/lora_B` under kohya names), then the per-component state-dict
conversions the loaders apply (`convert_unet_state_dict_to_peft`, `convert_state_dict_to_diffusers` /
`convert_state_dict_to_peft` for the text encoders, which raise "Could not automatically infer state dict type" for a
text-encoder part holding only attention q/k/v). The last step, PEFT's injection into the models, is modelled with
the family's module tables instead of building models: a target module the model does not have is dropped (and fails
the whole load with `NoMatchingPeftModuleError` when nothing of that component matches, e.g. a file holding only
`lora_unet_add_embedding_linear_1`), and keys left in a non-PEFT spelling are ignored (text-encoder q/k/v of a layer
without `out_proj`). These rules (formats.md §11) were measured with the real loader; `load_with_diffusers` runs that
real loader on meta-device models so tests can cross-check.

Each tensor is followed through the conversion by identity, so every file module gets a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from ...adapters import ADAPTER_LABELS  # display names only: the adapter kinds stay this parser's own
from .keys import group_modules, split_key
from .tables import build_meta_models, family_of, family_tables

VERSION = "0.42.1"
LABEL = "diffusers"
_NOT_LOADABLE = {"loha", "lokr", "glora", "oft", "boft", "ia3", "full", "norm", "locon_tucker"}


@dataclass
class DiffusersResult:
    loads: bool
    reason: str | None = None  # why `load_lora_weights` raises, in words
    detail: str | None = None  # the exception diffusers raises
    loaded: set[str] = field(default_factory=set)  # file modules that end up as PEFT LoRA layers
    dropped: dict[str, str] = field(default_factory=dict)  # file module -> why it is silently ignored
    notes: list[str] = field(default_factory=list)


def _mixin(family: str):
    from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin

    return StableDiffusionXLLoraLoaderMixin if family_of(family) == "sdxl" else StableDiffusionLoraLoaderMixin


def _quiet():
    import diffusers.utils.logging as dlog

    previous = dlog.get_verbosity()
    dlog.set_verbosity_error()
    return lambda: dlog.set_verbosity(previous)


def _components(family: str) -> dict[str, str]:
    """state-dict prefix -> table role."""
    if family_of(family) == "sdxl":
        return {"unet": "unet", "text_encoder": "te1", "text_encoder_2": "te2"}
    return {"unet": "unet", "text_encoder": "te"}


def check(sd, family: str) -> DiffusersResult:
    """Replay `pipe.load_lora_weights(sd)` for `family` without building the pipeline."""
    modules = group_modules(sd)
    kinds = {m.kind for m in modules.values()}
    work = {k: v.view(v.shape) for k, v in sd.items()}  # fresh tensor objects to follow by identity
    origin = {id(v): k for k, v in work.items()}
    restore = _quiet()
    try:
        return _check(work, origin, modules, kinds, family)
    finally:
        restore()


def _fail(detail: str, kinds) -> DiffusersResult:
    bad = sorted(k for k in kinds if k in _NOT_LOADABLE)
    reason = f"cannot load {', '.join(ADAPTER_LABELS[k] for k in bad)}" if bad else detail
    return DiffusersResult(False, reason, detail)


def _check(work, origin, modules, kinds, family) -> DiffusersResult:
    from diffusers.utils.state_dict_utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    layers = family_tables(family).unet_config["num_res_blocks"][0]
    kwargs = {"unet_config": SimpleNamespace(layers_per_block=layers)} if family_of(family) == "sdxl" else {}
    try:
        state_dict, network_alphas = _mixin(family).lora_state_dict(dict(work), **kwargs)
    except Exception as e:  # noqa: BLE001 - any exception is a refused file
        return _fail(f"lora_state_dict: {type(e).__name__}: {_short(e)}", kinds)
    if not all("lora" in k for k in state_dict):
        return _fail("ValueError: Invalid LoRA checkpoint (a key without 'lora')", kinds)

    result = DiffusersResult(True)
    survivors = {id(v) for v in state_dict.values()}
    unet_names = [k for k in work if k.startswith("lora_unet_")]
    mixed = any(_is_sgm(k) for k in unet_names) and any(_is_diffusers(k) for k in unet_names)
    for k, v in work.items():
        if id(v) not in survivors and not k.endswith(".alpha"):
            module, suffix, _ = split_key(k)
            if suffix == "dora_scale":
                continue
            if mixed and _is_sgm(k):
                why = "SGM-named keys are discarded when the file also has diffusers-named UNet keys"
            else:
                why = "overwritten by another module that converts to the same diffusers name"
            result.dropped.setdefault(module, why)
    if any(m.tensors.get("dora_scale") is not None for m in modules.values()):
        result.notes.append("dora_scale is dropped: DoRA modules load as plain LoRA (different weights)")

    tables = family_tables(family)
    for prefix, role in _components(family).items():
        part = {k[len(prefix) + 1 :]: v for k, v in state_dict.items() if k.startswith(prefix + ".")}
        if not part:
            continue
        try:
            if role == "unet":
                if "lora_A" not in next(iter(part)):
                    part = convert_unet_state_dict_to_peft(part)
                if any(".lokr_" in k for k in part):
                    return _fail("PEFT-style LoKr is not modelled", kinds)
            else:
                part = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
                if role != "te2":  # transformers 5 flattens CLIPTextModel; old names carry text_model.
                    part = {k.removeprefix("text_model."): v for k, v in part.items()}
        except Exception as e:  # noqa: BLE001
            return _fail(f"{prefix}: {type(e).__name__}: {_short(e)}", kinds)
        failure = _inject(part, tables.diffusers_modules[role], prefix, role, origin, result)
        if failure:
            return _fail(failure, kinds)
    for name, m in modules.items():
        if name not in result.loaded and name not in result.dropped and m.kind not in ("none",):
            result.dropped[name] = "not used by the loader"
    return result


def _is_sgm(key: str) -> bool:
    return any(p in key for p in ("input_blocks", "middle_block", "output_blocks"))


def _is_diffusers(key: str) -> bool:
    return any(p in key for p in ("down_blocks", "mid_block", "up_blocks"))


def _inject(part, table, prefix, role, origin, result: DiffusersResult) -> str | None:
    """PEFT's injection: targets = names before `.lora`, matched to the model's modules; None when it loads."""
    targets: dict[str, list] = {}
    for k, v in part.items():
        file_module = split_key(origin.get(id(v), k))[0]
        if not (k.endswith((".lora_A.weight", ".lora_B.weight", ".lora_B.bias")) or "lora_magnitude_vector" in k):
            result.dropped[file_module] = _unexpected_reason(k, role)
            continue
        targets.setdefault(k.split(".lora")[0], []).append(file_module)
    ranked = [k for k in part if k.endswith("lora_B.weight") and k.split(".lora")[0].endswith(_TE_RANKED)]
    if role != "unet" and not ranked:
        return f"{prefix}: IndexError: no rank found for the text-encoder modules"
    matched = 0
    for target, file_modules in targets.items():
        shape = table.get(target, "missing")
        if shape == "missing":
            why = f"diffusers has no module {prefix}.{target} (PEFT target not found)"
        elif shape is None or len(shape) == 1:
            return f"{prefix}: ValueError: target module {target} is not a Linear/Conv layer"
        else:
            matched += 1
            result.loaded.update(file_modules)
            continue
        for fm in file_modules:
            result.dropped[fm] = why
    if targets and not matched:
        return f"{prefix}: NoMatchingPeftModuleError: target modules {sorted(targets)[:3]} not found in the base model"
    return None


_TE_RANKED = (".q_proj", ".k_proj", ".v_proj", ".out_proj", ".fc1", ".fc2")


def _unexpected_reason(key: str, role: str) -> str:
    if role != "unet" and "_lora." in key:
        return "text-encoder q/k/v without out_proj in the same layer are not converted (diffusers ignores them)"
    return f"key {key} is not in PEFT form after conversion (ignored)"


def _short(e: Exception) -> str:
    text = " ".join(str(e).split())
    return text if len(text) < 160 else text[:157] + "..."


def load_with_diffusers(sd, family: str) -> dict[str, set[str]]:
    """Run the real `load_lora_weights` on meta-device models; component -> names of modules that got LoRA layers.

    Raises whatever diffusers raises. Slow-ish (builds the family's models, ~1-2 s); meant for cross-checks in tests.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    models = build_meta_models(family)
    mixin = _mixin(family)
    roles = _components(family)

    class _Pipe(mixin):
        hf_device_map = None

        @property
        def components(self):
            return {name: getattr(self, name) for name in roles}

    pipe = _Pipe()
    for name, role in roles.items():
        setattr(pipe, name, models[role])
    restore = _quiet()
    try:
        pipe.load_lora_weights({k: v.clone() for k, v in sd.items()})
    finally:
        restore()
    return {
        name: {n for n, m in getattr(pipe, name).named_modules() if isinstance(m, BaseTunerLayer)} for name in roles
    }
