"""`loraforge import`: a kohya or diffusers training command (or kohya's `--config_file` TOML) as a loraforge config.

Pure: text in, an `ImportResult` out (the config data, its TOML, and the report of what was mapped, what was not and
why, and where the meaning differs); the CLI reads and writes the files. Every flag goes through the alias table
(`aliases.py`), the same one the config error messages use. The scripts' defaults that differ from loraforge's are
written too, so the config trains as the command did. The result is validated: a value loraforge refuses is moved
to the unmapped list with the reason, so the config written always loads.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Callable

from ..errors import ConfigError
from .aliases import (
    ACCELERATE,
    DIFFUSERS,
    DIFFUSERS_DEFAULTS,
    DIFFUSERS_SCRIPTS,
    KOHYA,
    KOHYA_DEFAULTS,
    KOHYA_SCRIPTS,
    NETWORK_ARGS,
    OPTIMIZER_ARGS,
    Alias,
    find,
)
from .base import str_choices
from .command_line import Command, Flag, parse_command
from .load import validate_config
from .network import BLOCK_COUNTS
from .optimizer import OptimizerConfig
from .root import SECTIONS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KOHYA_TOML = "kohya --config_file TOML"
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


class Unmappable(Exception):
    """A flag (or value) loraforge cannot take; the message says why."""


@dataclass
class Mapped:
    flag: str  # as written, e.g. `--network_dim=8`
    key: str  # section.key
    value: Any
    default: bool = False  # the script's default, written because it differs from loraforge's


@dataclass
class Unmapped:
    flag: str
    reason: str


@dataclass
class ImportResult:
    source: str
    tool: str  # kohya | diffusers
    script: str
    data: dict[str, dict[str, Any]]
    mapped: list[Mapped]
    unmapped: list[Unmapped]
    differences: list[str]
    notes: list[str]

    def toml(self) -> str:
        import tomli_w

        head = [f"# Imported by `loraforge import` from {self.source} ({self.script}, {self.tool})."]
        head += [f"# not mapped: {u.flag}: {u.reason}" for u in self.unmapped]
        head += [f"# differs: {d}" for d in self.differences]
        head += [f"# note: {n}" for n in self.notes]
        return "\n".join(head) + "\n\n" + tomli_w.dumps(self.data)

    def report_lines(self) -> list[str]:
        lines = [f"{self.source}: {self.script} ({self.tool})"]
        explicit = [m for m in self.mapped if not m.default]
        defaults = [m for m in self.mapped if m.default]
        lines.append(f"mapped ({len(explicit)}):")
        lines += [f"  {_short(m.flag)} → {m.key} = {_show(m.value)}" for m in explicit]
        if defaults:
            lines.append(f"defaults of {self.script} written, they differ from loraforge's ({len(defaults)}):")
            lines += [f"  {_short(m.flag)} → {m.key} = {_show(m.value)}" for m in defaults]
        lines.append(f"not mapped ({len(self.unmapped)}):")
        lines += [f"  {_short(u.flag)}: {u.reason}" for u in self.unmapped]
        lines.append(f"meaning differs ({len(self.differences)}):")
        lines += [f"  {d}" for d in self.differences]
        if self.notes:
            lines.append("notes:")
            lines += [f"  {n}" for n in self.notes]
        return lines


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, float) else repr(value)


def _short(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


# ------------------------------------------------------------------------------------------------------- values
def coerce(key: str, value: Any) -> Any:
    """A flag's value (a string, True for a bare flag, a list, or a TOML value) as the type of loraforge's `key`."""
    section, _, name = key.partition(".")
    ann = SECTIONS[section].model_fields[name].annotation
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        ann = next(a for a in typing.get_args(ann) if a is not type(None))
    if typing.get_origin(ann) is list:
        inner = typing.get_args(ann)[0]
        items = value if isinstance(value, list) else [p for p in str(value).split(",") if p.strip()]
        return [_scalar(inner, v) for v in items]
    if isinstance(value, list):
        raise Unmappable(f"{key} takes one value, not {len(value)}")
    return _scalar(ann, value)


def _scalar(kind: Any, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise Unmappable(f"{value!r} is not true or false")
    if value is True:
        raise Unmappable("given without a value")
    if kind is int:
        try:
            number = float(value)
        except ValueError:
            raise Unmappable(f"{value!r} is not a whole number") from None
        if not number.is_integer():
            raise Unmappable(f"{value!r} is not a whole number")
        return int(number)
    if kind is float:
        try:
            return float(value)
        except ValueError:
            raise Unmappable(f"{value!r} is not a number") from None
    return str(value)


def _items(value: Any) -> list[str]:
    """`--network_args a=1 b=2` / TOML `["a=1", "b=2"]` -> ["a=1", "b=2"]."""
    if value is True:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


# ------------------------------------------------------------------------------------------------------- translation
class _Translation:
    def __init__(self, tool: str, script: str, flags: list[Flag]):
        self.tool, self.script = tool, script
        self.given = {f.name: f for f in flags}
        self.data: dict[str, dict[str, Any]] = {}
        self.mapped: dict[str, Mapped] = {}
        self.unmapped: list[Unmapped] = []
        self.differences: list[str] = []
        self.notes: list[str] = []
        self.network_args: dict[str, tuple[str, str]] = {}  # key -> (value, text)
        self.optimizer_args: dict[str, tuple[str, str]] = {}
        self.network_module: str | None = None
        self.warmup_ratio: tuple[float, str] | None = None  # kohya's --lr_warmup_steps=0.1
        self.checkpoints_limit: tuple[int, str] | None = None  # diffusers' --checkpoints_total_limit

    # ---- recording
    def set(self, key: str, value: Any, text: str, default: bool = False) -> None:
        value = coerce(key, value)
        section, _, name = key.partition(".")
        old = self.mapped.get(key)
        if old is not None and old.flag != text and not old.default and not default:
            self.unmapped.append(Unmapped(old.flag, f"replaced by {text}"))
        self.data.setdefault(section, {})[name] = value
        self.mapped[key] = Mapped(text, key, value, default)

    def unset(self, key: str, reason: str) -> None:
        old = self.mapped.pop(key, None)
        section, _, name = key.partition(".")
        self.data.get(section, {}).pop(name, None)
        if self.data.get(section) == {}:
            del self.data[section]
        if old is not None:
            self.unmapped.append(Unmapped(old.flag, reason))

    def skip(self, text: str, reason: str) -> None:
        self.unmapped.append(Unmapped(text, reason))

    def differ(self, text: str, note: str) -> None:
        line = f"{_short(text, 60)}: {note}"
        if line not in self.differences:
            self.differences.append(line)

    def value(self, key: str) -> Any:
        section, _, name = key.partition(".")
        return self.data.get(section, {}).get(name)

    # ---- one flag
    def alias(self, name: str, tool: str | None = None) -> Alias | None:
        found = find(name, (tool or self.tool,))
        return found[0] if found else None

    def apply(self, alias: Alias, value: Any, text: str, default: bool = False) -> None:
        if alias.key is None:
            lead = "not needed" if alias.kind == "builtin" else "no equivalent"
            self.skip(text, f"{lead}: {alias.note}")
            return
        try:
            self.set(alias.key, value, text, default)
        except Unmappable as e:
            self.skip(text, str(e))
            return
        if alias.kind == "differs" and alias.note:
            self.differ(text, alias.note)

    def flag(self, flag: Flag) -> None:
        handler = _HANDLERS.get((self.tool, flag.name)) or _HANDLERS.get(("*", flag.name))
        if handler is not None:
            try:
                handler(self, flag)
            except Unmappable as e:
                self.skip(flag.text, str(e))
            return
        alias = self.alias(flag.name)
        if alias is None:
            self.skip(flag.text, f"not a {self.tool} flag loraforge knows (check the spelling)")
            return
        self.apply(alias, flag.value, flag.text)

    def default(self, name: str, value: Any, why: str = "") -> None:
        """Write the script's default for an absent flag."""
        alias = self.alias(name)
        if alias is not None and name not in self.given:
            who = "kohya" if self.tool == KOHYA else self.script
            self.apply(alias, value, f"--{name}={value} ({who}'s default{why})", default=True)


# ---- handlers for flags whose value needs more than a type conversion
def _bare(t: _Translation, flag: Flag, key: str, value: Any) -> None:
    """A store_true flag that sets `key` to `value`."""
    alias = t.alias(flag.name)
    if not _scalar(bool, flag.value):  # `--flag=false`
        return
    t.set(key, value, flag.text)
    if alias is not None and alias.kind == "differs":
        t.differ(flag.text, alias.note)


def _network_module(t: _Translation, flag: Flag) -> None:
    t.network_module = str(flag.value)


def _key_values(t: _Translation, flag: Flag, into: dict) -> None:
    dashes = "--" if flag.text.startswith("--") else ""  # a command line, or a TOML file
    for item in _items(flag.value):
        key, eq, value = item.partition("=")
        if not eq:
            t.skip(f"{dashes}{flag.name} {item}", "not key=value")
            continue
        into[key.strip()] = (value.strip(), f"{dashes}{flag.name} {item.strip()}")


def _optimizer_type(t: _Translation, flag: Flag) -> None:
    name = str(flag.value)
    choices = str_choices(OptimizerConfig)["type"]
    if name.lower() in choices:
        t.set("optimizer.type", choices[name.lower()], flag.text)
        return
    if t.tool == DIFFUSERS:  # diffusers warns and falls back to AdamW
        t.set("optimizer.type", "adamw", flag.text)
        t.differ(flag.text, f"diffusers trains {name!r} as AdamW (it knows AdamW and prodigy only)")
        return
    raise Unmappable(
        f"no loraforge optimizer {name!r} ({', '.join(choices.values())} map, in any case); loraforge's default "
        "adamw is written"
    )


def _use_8bit_adam(t: _Translation, flag: Flag) -> None:
    if t.value("optimizer.type") == "prodigy":
        raise Unmappable("ignored with Prodigy, as in the script")
    _bare(t, flag, "optimizer.type", "adamw8bit")


def _resolution(t: _Translation, flag: Flag) -> None:
    value = flag.value
    sizes = value if isinstance(value, list) else [p for p in str(value).replace("x", ",").split(",") if p.strip()]
    sizes = [coerce("dataset.resolution", s) for s in sizes]
    if len(set(sizes)) != 1:
        raise Unmappable(f"a non-square size ({' × '.join(map(str, sizes))}) has no equivalent: dataset.resolution "
                         "is one number (the bucket area with dataset.enable_bucket)")
    t.set("dataset.resolution", sizes[0], flag.text)


def _kohya_clip_skip(t: _Translation, flag: Flag) -> None:
    n = coerce("training.clip_skip", flag.value)
    if n <= 1:
        raise Unmappable("kohya's clip_skip 1 is the last layer: loraforge's default (unset)")
    t.set("training.clip_skip", n - 1, flag.text)
    t.differ(flag.text, f"kohya's clip_skip {n} is loraforge's {n - 1} (kohya counts the last layer as 1)")


def _save_precision(t: _Translation, flag: Flag) -> None:
    value = {"float": "fp32", "fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}.get(str(flag.value).lower())
    if value is None:
        raise Unmappable(f"{flag.value!r}: float, fp16 or bf16")
    t.set("output.save_precision", value, flag.text)


def _save_model_as(t: _Translation, flag: Flag) -> None:
    if str(flag.value).lower() != "safetensors":
        raise Unmappable("loraforge writes safetensors LoRA files only (kohya layout and diffusers layout)")
    t.apply(t.alias("save_model_as"), flag.value, flag.text)


def _log_with(t: _Translation, flag: Flag) -> None:
    value = str(flag.value).lower()
    if value in ("tensorboard", "all"):
        t.set("output.log_with", "tensorboard", flag.text)
        if value == "all":
            t.differ(flag.text, "loraforge logs to TensorBoard only")
        return
    raise Unmappable(f"loraforge logs to TensorBoard only (output.log_with = 'tensorboard' or 'none'), not {value}")


def _text_encoder_lr(t: _Translation, flag: Flag) -> None:
    values = flag.value if isinstance(flag.value, list) else [flag.value]
    t.set("optimizer.text_encoder_lr", values[0], flag.text)
    if len({str(v) for v in values}) > 1:
        t.differ(flag.text, "one learning rate for both text encoders in loraforge: the first is used")


def _lr_warmup_steps(t: _Translation, flag: Flag) -> None:
    text = str(flag.value).strip()
    try:
        ratio = float(text.rstrip("%")) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise Unmappable(f"{text!r} is not a number of steps, a ratio or a percentage") from None
    if text.endswith("%") or ("." in text and ratio < 1):
        t.warmup_ratio = (ratio, flag.text)
        return
    t.apply(t.alias("lr_warmup_steps"), flag.value, flag.text)


def _max_grad_norm(t: _Translation, flag: Flag) -> None:
    if _scalar(float, flag.value) == 0:
        raise Unmappable("0 turns clipping off; loraforge clips unless optimizer.max_grad_norm is unset, which a TOML "
                         "file cannot write (clipping at loraforge's 1.0 stays)")
    t.apply(t.alias("max_grad_norm"), flag.value, flag.text)


def _resume(t: _Translation, flag: Flag) -> None:
    if str(flag.value) != "latest":
        raise Unmappable(t.alias(flag.name).note)
    t.set("training.resume", "latest", flag.text)
    t.differ(flag.text, "`latest` is the newest checkpoint of the loraforge run (not of a diffusers run)")


def _diffusers_output_dir(t: _Translation, flag: Flag) -> None:
    path = PurePath(str(flag.value).rstrip("/\\") or ".")
    t.set("output.output_dir", str(path.parent), flag.text)
    t.set("output.output_name", path.name, flag.text)
    t.differ(flag.text, t.alias("output_dir").note + " (split in two so the files land in the same folder)")


def _prodigy_bool(t: _Translation, flag: Flag) -> None:
    key = t.alias(flag.name).key
    t.set(key, True, flag.text)
    if flag.value is not True and str(flag.value).strip().lower() in _FALSE:
        t.differ(flag.text, "diffusers declares it type=bool, so False means true there: written as true")


def _checkpoints_total_limit(t: _Translation, flag: Flag) -> None:
    t.checkpoints_limit = (coerce("training.save_last_n_steps", flag.value), flag.text)


_HANDLERS: dict[tuple[str, str], Callable[[_Translation, Flag], None]] = {
    (KOHYA, "network_module"): _network_module,
    (KOHYA, "network_args"): lambda t, f: _key_values(t, f, t.network_args),
    (KOHYA, "optimizer_args"): lambda t, f: _key_values(t, f, t.optimizer_args),
    ("*", "optimizer_type"): _optimizer_type,
    (DIFFUSERS, "optimizer"): _optimizer_type,
    ("*", "use_8bit_adam"): _use_8bit_adam,
    (KOHYA, "resolution"): _resolution,
    (KOHYA, "clip_skip"): _kohya_clip_skip,
    (KOHYA, "v2"): lambda t, f: _bare(t, f, "model.family", "sd2"),
    (KOHYA, "v_parameterization"): lambda t, f: _bare(t, f, "model.prediction_type", "v_prediction"),
    (KOHYA, "random_crop"): lambda t, f: _bare(t, f, "dataset.center_crop", False),
    (KOHYA, "network_train_unet_only"): lambda t, f: _bare(t, f, "network.train_text_encoder", False),
    (DIFFUSERS, "use_dora"): lambda t, f: _bare(t, f, "network.algo", "dora"),
    (KOHYA, "save_precision"): _save_precision,
    (KOHYA, "save_model_as"): _save_model_as,
    (KOHYA, "log_with"): _log_with,
    (DIFFUSERS, "report_to"): _log_with,
    ("*", "text_encoder_lr"): _text_encoder_lr,
    (KOHYA, "lr_warmup_steps"): _lr_warmup_steps,
    ("*", "max_grad_norm"): _max_grad_norm,
    ("*", "resume"): _resume,
    ("*", "resume_from_checkpoint"): _resume,
    (DIFFUSERS, "output_dir"): _diffusers_output_dir,
    (DIFFUSERS, "prodigy_decouple"): _prodigy_bool,
    (DIFFUSERS, "prodigy_use_bias_correction"): _prodigy_bool,
    (DIFFUSERS, "prodigy_safeguard_warmup"): _prodigy_bool,
    (DIFFUSERS, "checkpoints_total_limit"): _checkpoints_total_limit,
}


# ------------------------------------------------------------------------------------------------------- kohya
_LYCORIS_ALGOS = {"lora": "locon", "locon": "locon", "loha": "loha", "lokr": "lokr"}


def _kohya_network(t: _Translation, family: str) -> None:
    module = t.network_module
    args = dict(t.network_args)
    module_text = t.given["network_module"].text if "network_module" in t.given else "--network_module (not given)"
    note = t.alias("network_module").note
    if module == "lycoris.kohya":
        algo, algo_text = args.pop("algo", ("lora", module_text))
        dora, dora_text = args.pop("dora_wd", ("false", ""))
        if _scalar(bool, dora):
            t.set("network.algo", "dora", dora_text)
        elif algo.lower() in _LYCORIS_ALGOS:
            t.set("network.algo", _LYCORIS_ALGOS[algo.lower()], algo_text)
        else:
            t.skip(algo_text, f"LyCORIS algo {algo!r} has no loraforge equivalent (lora/locon, loha, lokr and "
                              "dora_wd=True map); 'locon' is written")
            t.set("network.algo", "locon", module_text, default=True)
        preset, preset_text = args.pop("preset", ("full", module_text + " (LyCORIS' default preset)"))
        t.set("network.preset", preset, preset_text)
        t.differ(module_text, note)
    else:
        if module not in ("networks.lora", None):
            t.skip(module_text, f"no equivalent network module {module!r} (networks.lora and lycoris.kohya map); "
                                "kohya's plain LoRA (networks.lora) is written")
        elif module is None:
            t.notes.append("no --network_module: kohya requires one; networks.lora is assumed")
        conv = args.get("conv_dim", ("0", ""))[0]
        convs = conv.strip() not in ("", "0", "None")
        t.set("network.algo", "locon" if convs else "lora", module_text, default=module is None)
        t.set("network.preset", "full" if convs else "attn-mlp", module_text, default=module is None)
        t.differ(module_text, note)
    for key, (value, text) in args.items():
        alias = t.alias(key, NETWORK_ARGS)
        if alias is None:
            t.skip(text, "not a network_args key loraforge knows")
        elif key == "wd_on_output":
            if _scalar(bool, value):
                t.set("network.dora_axis", "output", text)
        elif key.endswith(("block_dims", "block_alphas")):
            _block_list(t, alias, value, text, family)
        else:
            t.apply(alias, value, text)


def _block_list(t: _Translation, alias: Alias, value: str, text: str, family: str) -> None:
    try:
        values = coerce(alias.key, value)
    except Unmappable as e:
        t.skip(text, str(e))
        return
    if family == "sdxl" and len(values) == BLOCK_COUNTS["sd15"]:
        if len(set(values)) != 1:
            t.skip(text, "25 values are the SD 1.x layout; SDXL has 23 blocks (emb, IN0-8, MID0-2, OUT0-8, out): "
                         f"write {alias.key} with 23 values")
            return
        values = values[:1] * BLOCK_COUNTS["sdxl"]
        t.differ(text, "25 equal values (the SD 1.x layout) written as 23 equal values, SDXL's block count")
    t.set(alias.key, values, text)


def _kohya_optimizer_args(t: _Translation) -> None:
    for key, (value, text) in t.optimizer_args.items():
        alias = t.alias(key, OPTIMIZER_ARGS)
        if alias is None:
            t.skip(text, "not an optimizer argument loraforge knows")
        elif key == "betas":
            parts = [p for p in value.strip("()[] ").split(",") if p.strip()]
            if len(parts) != 2:
                t.skip(text, "expected betas=b1,b2")
                continue
            t.set("optimizer.adam_beta1", parts[0], text)
            t.set("optimizer.adam_beta2", parts[1], text)
        else:
            t.apply(alias, value, text)


def _kohya_rules(t: _Translation, family: str) -> None:
    _kohya_network(t, family)
    _kohya_optimizer_args(t)
    for name, value in KOHYA_DEFAULTS.items():
        if name == "max_train_steps" and "max_train_epochs" in t.given:
            continue
        t.default(name, value)
    if "enable_bucket" in t.given:
        t.default("min_bucket_reso", 256, " with --enable_bucket")
        t.default("max_bucket_reso", 1024, " with --enable_bucket")
    if "sample_prompts" in t.given:
        t.default("sample_sampler", "ddim")
    te_off = "network_train_unet_only" in t.given or "cache_text_encoder_outputs" in t.given
    if not te_off:
        t.set("network.train_text_encoder", True,
              "--network_train_unet_only not given (kohya trains the text encoders)", default=True)
        t.differ("--network_train_unet_only", t.alias("network_train_unet_only").note)
    elif t.value("optimizer.text_encoder_lr") is not None:
        t.unset("optimizer.text_encoder_lr", "the text encoder does not train (--network_train_unet_only), so "
                                             "kohya does not use it either")
    if t.value("optimizer.type") == "adafactor" and "relative_step" not in t.optimizer_args:
        t.set("optimizer.adafactor_relative_step", True, "Adafactor's relative_step (kohya's default)", default=True)
        t.set("optimizer.lr_scheduler", "adafactor", "Adafactor's relative_step (kohya's default)", default=True)
        t.differ("--optimizer_type=Adafactor", "kohya turns relative_step on and the schedule into 'adafactor'")
    if "max_train_epochs" in t.given and "max_train_steps" in t.given:
        t.unset("training.max_train_steps", "kohya: --max_train_epochs wins over --max_train_steps")
    if "sample_every_n_epochs" in t.given and "sample_every_n_steps" in t.given:
        t.unset("sampling.sample_every_n_steps", "kohya: --sample_every_n_epochs wins over --sample_every_n_steps")
    if t.value("dataset.config_file") is not None:
        for key in ("dataset.train_data_dir", "dataset.reg_data_dir"):
            t.unset(key, "kohya ignores it when --dataset_config is given")
    ratio = t.warmup_ratio
    if ratio is not None:
        steps = t.value("training.max_train_steps")
        if steps is None:
            t.skip(ratio[1], "a warm-up ratio needs the step count, and the run is counted in epochs")
        else:
            t.set("optimizer.lr_warmup_steps", int(ratio[0] * steps), ratio[1])
            t.differ(ratio[1], f"the ratio {ratio[0]} of {steps} steps")


# ------------------------------------------------------------------------------------------------------- diffusers
def _diffusers_rules(t: _Translation) -> None:
    te = "train_text_encoder" in t.given or "train_text_encoder_ti" in t.given
    for name, value in DIFFUSERS_DEFAULTS.get(t.script, {}).items():
        if name == "num_train_epochs" and "max_train_steps" in t.given:
            continue
        if name in ("validation_epochs", "num_validation_images") and "validation_prompt" not in t.given:
            continue
        if name in ("text_encoder_lr", "adam_weight_decay_text_encoder") and not te:
            continue
        t.default(name, value)
    if "center_crop" not in t.given:
        if t.value("dataset.cache_latents"):
            t.differ("--cache_latents", "diffusers crops each image once at random (no --center_crop); cached "
                                        "latents need a fixed crop, so loraforge keeps its center crop")
        else:
            t.set("dataset.center_crop", False, f"--center_crop not given ({t.script} crops at random)", default=True)
            t.differ("--center_crop", "diffusers draws each image's random crop once for the whole run; loraforge "
                                      "draws a new one every step")
    if t.value("network.algo") in (None, "lora"):
        t.set("network.init_lora_weights", "gaussian", f"{t.script}'s LoRA initialisation (peft 'gaussian')",
              default=True)
    if "max_train_steps" in t.given and "num_train_epochs" in t.given:
        t.unset("training.num_train_epochs", "diffusers: --max_train_steps overrides --num_train_epochs")
    if "validation_epochs" in t.given and "validation_prompt" not in t.given:
        t.unset("sampling.sample_every_n_epochs", "without --validation_prompt diffusers never samples")
    limit = t.checkpoints_limit
    if limit is not None:
        every = t.value("training.save_every_n_steps")
        if every is None:
            t.skip(limit[1], "needs checkpoints (--checkpointing_steps)")
        else:
            t.set("training.save_last_n_steps", limit[0] * every, limit[1])
            t.differ(limit[1], f"{limit[0]} checkpoints every {every} steps = the last {limit[0] * every} steps")


# ------------------------------------------------------------------------------------------------------- entry
def import_text(text: str, source: str = "<stdin>", base_dir: Path | None = None) -> ImportResult:
    """Translate a pasted command line (or a kohya --config_file TOML); ConfigError when it is neither."""
    if not text.strip():
        raise ConfigError(f"{source}: empty; paste a kohya or diffusers training command, or a kohya --config_file "
                          "TOML")
    toml = _as_toml(text)
    if toml is not None:
        if "datasets" in toml or "general" in toml:
            raise ConfigError(
                f"{source} is a kohya dataset config ([general] / [[datasets]]): loraforge reads it as it is; set "
                f"dataset.config_file = {source!r} (or --set dataset.config_file={source})"
            )
        flags = _toml_flags(toml, "")
        return _translate(KOHYA, KOHYA_TOML, flags, source, "auto", Command(KOHYA_TOML, flags))
    try:
        command = parse_command(text, set(KOHYA_SCRIPTS) | set(DIFFUSERS_SCRIPTS))
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    tool = KOHYA if command.script in KOHYA_SCRIPTS else DIFFUSERS
    family = (KOHYA_SCRIPTS if tool == KOHYA else DIFFUSERS_SCRIPTS)[command.script]
    flags = command.flags
    config_file = next((f for f in flags if f.name == "config_file"), None) if tool == KOHYA else None
    extra: list[Unmapped] = []
    if config_file is not None:
        flags = [f for f in flags if f is not config_file]
        path = Path(str(config_file.value)).expanduser()
        path = path if path.is_absolute() or base_dir is None else base_dir / path
        try:
            from_file = _toml_flags(tomllib.loads(path.read_text(encoding="utf-8")), f"{path.name}: ")
        except (OSError, tomllib.TOMLDecodeError) as e:
            extra.append(Unmapped(config_file.text, f"cannot read it ({e}); import it on its own: loraforge import "
                                                    f"{config_file.value}"))
        else:
            on_line = {f.name for f in flags}
            flags = [f for f in from_file if f.name not in on_line] + flags
    result = _translate(tool, command.script, flags, source, family, command)
    result.unmapped[:0] = extra
    return result


def _as_toml(text: str) -> dict | None:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None
    return data or None


def _toml_flags(data: dict, prefix: str) -> list[Flag]:
    """kohya's --config_file: sections are flattened; false, "" and unset mean the flag is not given."""
    flags = []
    for key, value in data.items():
        for name, v in (value.items() if isinstance(value, dict) else [(key, value)]):
            if v is False or v == "" or isinstance(v, dict):
                continue
            flags.append(Flag(name, v, f"{prefix}{name} = {json.dumps(v)}"))
    return flags


_NOTE_WHEN_ABSENT = {KOHYA: ("seed", "mixed_precision", "save_precision"), DIFFUSERS: ("seed", "mixed_precision")}
_FIRST = ("network_module", "optimizer_type", "optimizer", "use_8bit_adam")


def _translate(tool: str, script: str, flags: list[Flag], source: str, family: str, command: Command) -> ImportResult:
    t = _Translation(tool, script, flags)
    for f in sorted(flags, key=lambda f: f.name not in _FIRST):
        t.flag(f)
    if family != "auto" and t.value("model.family") is None:
        t.set("model.family", family, f"{script} (the script trains {family})")
    if tool == KOHYA:
        _kohya_rules(t, t.value("model.family") or family)
    else:
        _diffusers_rules(t)
    _launcher(t, command)
    if tool == KOHYA and script == KOHYA_TOML and t.value("model.family") is None:
        t.notes.append("the TOML does not say which script it is for: model.family = 'auto' detects it from the "
                       "model (set it to 'sdxl' for sdxl_train_network.py)")
    for name in _NOTE_WHEN_ABSENT[tool]:
        alias = t.alias(name)
        if name not in t.given and t.value(alias.key) is None:
            t.differ(f"--{name} (not given)", alias.note)
    _validate(t, source)
    order = list(SECTIONS)
    data = {s: _ordered(s, t.data[s]) for s in sorted(t.data, key=order.index)}
    mapped = sorted(t.mapped.values(), key=lambda m: (order.index(m.key.split(".")[0]), m.key))
    return ImportResult(source, tool, script, data, mapped, t.unmapped, t.differences, t.notes)


def _ordered(section: str, values: dict) -> dict:
    fields = list(SECTIONS[section].model_fields)
    return {k: values[k] for k in sorted(values, key=fields.index)}


def _launcher(t: _Translation, command: Command) -> None:
    for f in command.launcher_flags:
        alias = t.alias(f.name, ACCELERATE) if command.launcher == "accelerate launch" else None
        if alias is not None and alias.key and "mixed_precision" not in t.given:
            t.apply(alias, f.value, f"accelerate launch {f.text}")
        elif alias is not None and alias.key:
            t.skip(f"accelerate launch {f.text}", "the script's own --mixed_precision wins")
        else:
            t.skip(f"{command.launcher} {f.text}", "an option of the launcher: run `accelerate launch [its options] -m "
                                                   "loraforge train CONFIG.toml` (README, Several GPUs)")
    for assignment in command.environment:
        t.notes.append(f"{assignment}: an environment variable of the command; set it when you run loraforge too")
    for word in command.positional:
        t.skip(word, "a positional argument; the script takes none")
    for name in command.undefined:
        t.notes.append(f"${name} is not defined in the pasted text: its value was kept as written; edit the config")


def _validate(t: _Translation, source: str) -> None:
    """Drop what loraforge refuses, one key at a time (the first key an error names), until the config loads."""
    for _ in range(len(t.mapped) + 1):
        try:
            validate_config(t.data, source)
            return
        except ConfigError as e:
            problems = e.problems
        prefix = f"{source}: "
        for problem in problems:
            text = problem.removeprefix(prefix)
            named = sorted((text.find(k), k) for k in t.mapped if text.find(k) >= 0)
            if named:
                t.unset(named[0][1], f"refused by loraforge: {text}")
                break
        else:
            raise ConfigError(f"{source}: the imported config does not load (a bug in loraforge import):",
                              [p.removeprefix(prefix) for p in problems])
    raise ConfigError(f"{source}: the imported config does not load (a bug in loraforge import)")
