"""The rules of `loraforge import` beyond the alias table: flags whose value needs converting, kohya's and
diffusers' defaults and precedences, `--network_args` / `--optimizer_args`."""

from __future__ import annotations

import ast
from pathlib import PurePath
from typing import Any, Callable, Mapping

from .aliases import (
    DIFFUSERS,
    KOHYA,
    NETWORK_ARGS,
    OPTIMIZER_ARGS,
    Alias,
)
from .base import str_choices
from .script_defaults import DIFFUSERS_DEFAULTS, KOHYA_DEFAULTS
from .command_line import Flag
from .import_flux import flux_handlers
from .import_translation import FALSE_WORDS, Translation, Unmappable, coerce, items, scalar
from .network import BLOCK_COUNTS
from .optimizer import OptimizerConfig


# ---- handlers for flags whose value needs more than a type conversion
def bare_flag(t: Translation, flag: Flag, key: str, value: Any) -> None:
    """A store_true flag that sets `key` to `value`."""
    alias = t.alias(flag.name)
    if not scalar(bool, flag.value):  # `--flag=false`
        return
    t.set(key, value, flag.text)
    if alias is not None and alias.kind == "differs":
        t.differ(flag.text, alias.note)


def _dynamo_backend(t: Translation, flag: Flag) -> None:
    """kohya's `--dynamo_backend`: `inductor` (its default) is what loraforge compiles with; others are not offered."""
    if str(flag.value).lower() == "inductor":
        t.apply(t.alias(flag.name), flag.value, flag.text)
    else:
        t.skip(flag.text, f"no equivalent: training.torch_compile compiles with TorchInductor (`inductor`) only, "
                          f"not {flag.value!r}")


def _network_module(t: Translation, flag: Flag) -> None:
    t.network_module = str(flag.value)


def _key_values(t: Translation, flag: Flag, into: dict) -> None:
    dashes = "--" if flag.text.startswith("--") else ""  # a command line, or a TOML file
    for item in items(flag.value):
        key, eq, value = item.partition("=")
        if not eq:
            t.skip(f"{dashes}{flag.name} {item}", "not key=value")
            continue
        into[key.strip()] = (value.strip(), f"{dashes}{flag.name} {item.strip()}")


def _optimizer_type(t: Translation, flag: Flag) -> None:
    name = str(flag.value)
    choices = str_choices(OptimizerConfig).get("type")
    if not choices or name.lower() in choices:  # not a list of names: the config's validation decides
        t.set("optimizer.type", choices[name.lower()] if choices else name, flag.text)
        return
    if "." in name and t.tool != DIFFUSERS:  # kohya's `torch.optim.AdamW`: a class by import path
        t.set("optimizer.type", name, flag.text)
        t.notes.append(f"{flag.text}: the class is imported when training starts, which checks optimizer_args "
                       "against its signature")
        return
    if t.tool == DIFFUSERS:  # diffusers warns and falls back to AdamW
        t.set("optimizer.type", "adamw", flag.text)
        t.differ(flag.text, f"diffusers trains {name!r} as AdamW (it knows AdamW and prodigy only)")
        return
    raise Unmappable(
        f"no loraforge optimizer {name!r} ({', '.join(choices.values())} map, in any case); loraforge's default "
        "(adamw) applies"
    )


def _use_8bit_adam(t: Translation, flag: Flag) -> None:
    if t.value("optimizer.type") == "prodigy":
        raise Unmappable("ignored with Prodigy, as in the script")
    bare_flag(t, flag, "optimizer.type", "adamw8bit")


def _resolution(t: Translation, flag: Flag) -> None:
    value = flag.value
    sizes = value if isinstance(value, list) else [p for p in str(value).replace("x", ",").split(",") if p.strip()]
    sizes = [scalar(int, s) for s in sizes]
    if len(sizes) not in (1, 2):
        raise Unmappable(f"{len(sizes)} numbers: kohya takes a size (512) or width,height (512,768)")
    t.set("dataset.resolution", sizes[0] if len(set(sizes)) == 1 else sizes, flag.text)  # "W,H": [W, H]


def _kohya_clip_skip(t: Translation, flag: Flag) -> None:
    n = coerce("training.clip_skip", flag.value)
    if n <= 1:
        raise Unmappable("kohya's clip_skip 1 is the last layer: loraforge's default (unset)")
    t.set("training.clip_skip", n - 1, flag.text)
    t.differ(flag.text, f"kohya's clip_skip {n} is loraforge's {n - 1} (kohya counts the last layer as 1)")


def _save_precision(t: Translation, flag: Flag) -> None:
    value = {"float": "fp32", "fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}.get(str(flag.value).lower())
    if value is None:
        raise Unmappable(f"{flag.value!r}: float, fp16 or bf16")
    t.set("output.save_precision", value, flag.text)


def _save_model_as(t: Translation, flag: Flag) -> None:
    if str(flag.value).lower() != "safetensors":
        raise Unmappable("loraforge writes safetensors LoRA files only (kohya layout and diffusers layout)")
    t.apply(t.alias("save_model_as"), flag.value, flag.text)


def log_with(t: Translation, flag: Flag) -> None:
    value = str(flag.value).lower()
    if value in ("tensorboard", "all", "wandb"):
        t.set("output.log_with", "wandb" if value == "wandb" else "tensorboard", flag.text)
        if value == "all":
            t.differ(flag.text, "loraforge logs to one tracker at a time: TensorBoard (or set 'wandb')")
        if value == "wandb":
            t.notes.append(f"{flag.text}: Weights & Biases is an optional extra: pip install 'loraforge[wandb]', then "
                           "`wandb login`")
        return
    raise Unmappable(f"loraforge logs to TensorBoard or wandb (output.log_with = 'tensorboard', 'wandb' or 'none'), "
                     f"not {value}")


def _logging_dir(t: Translation, flag: Flag) -> None:
    value = str(flag.value)
    if t.tool != KOHYA:  # diffusers and cloneofsimo: Path(output_dir, logging_dir)
        output_dir = t.given.get("output_dir")
        if output_dir is None:
            raise Unmappable(f"{t.tool} puts it inside --output_dir, which is not given; loraforge's default "
                             "(<run folder>/logs) applies")
        value = str(PurePath(str(output_dir.value)) / value)
        t.differ(flag.text, f"{t.tool} puts it inside --output_dir: written as {value!r}")
    t.set("output.logging_dir", value, flag.text)


def _text_encoder_lr(t: Translation, flag: Flag) -> None:
    values = flag.value if isinstance(flag.value, list) else [flag.value]
    t.set("optimizer.text_encoder_lr", values[0], flag.text)
    if len({str(v) for v in values}) > 1:
        t.differ(flag.text, "one learning rate for both text encoders in loraforge: the first is used")


def _lr_warmup_steps(t: Translation, flag: Flag) -> None:
    text = str(flag.value).strip()
    try:
        ratio = float(text.rstrip("%")) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise Unmappable(f"{text!r} is not a number of steps, a ratio or a percentage") from None
    if text.endswith("%") or ("." in text and ratio < 1):
        t.warmup_ratio = (ratio, flag.text)
        return
    t.apply(t.alias("lr_warmup_steps"), flag.value, flag.text)


def _max_grad_norm(t: Translation, flag: Flag) -> None:
    if scalar(float, flag.value) == 0:
        raise Unmappable("0 turns clipping off; loraforge clips unless optimizer.max_grad_norm is unset, which a TOML "
                         "file cannot write (clipping at loraforge's 1.0 stays)")
    t.apply(t.alias("max_grad_norm"), flag.value, flag.text)


def _resume(t: Translation, flag: Flag) -> None:
    if str(flag.value) != "latest":
        raise Unmappable(t.alias(flag.name).note)
    t.set("training.resume", "latest", flag.text)
    t.differ(flag.text, "`latest` is the newest checkpoint of the loraforge run (not of a diffusers run)")


def output_dir_split(t: Translation, flag: Flag) -> None:
    path = PurePath(str(flag.value).rstrip("/\\") or ".")
    t.set("output.output_dir", str(path.parent), flag.text)
    t.set("output.output_name", path.name, flag.text)
    t.differ(flag.text, t.alias("output_dir").note + " (split in two so the files land in the same folder)")


def _prodigy_bool(t: Translation, flag: Flag) -> None:
    key = t.alias(flag.name).key
    t.set(key, True, flag.text)
    if flag.value is not True and str(flag.value).strip().lower() in FALSE_WORDS:
        t.differ(flag.text, "diffusers declares it type=bool, so False means true there: written as true")


def paired_prior_preservation(t: Translation, flag: Flag) -> None:
    """diffusers batches instance and class images in pairs: `dataset.prior_batches = "paired"` trains the same."""
    bare_flag(t, flag, "dataset.with_prior_preservation", True)
    if t.value("dataset.with_prior_preservation"):
        t.set("dataset.prior_batches", "paired", flag.text)


def _checkpoints_total_limit(t: Translation, flag: Flag) -> None:
    t.checkpoints_limit = (coerce("training.save_last_n_steps", flag.value), flag.text)


Handler = Callable[[Translation, Flag], None]
_HANDLERS: dict[tuple[str, str], Handler] = {
    (KOHYA, "network_module"): _network_module,
    (KOHYA, "network_args"): lambda t, f: _key_values(t, f, t.network_args),
    (KOHYA, "optimizer_args"): lambda t, f: _key_values(t, f, t.optimizer_args),
    ("*", "optimizer_type"): _optimizer_type,
    (DIFFUSERS, "optimizer"): _optimizer_type,
    ("*", "use_8bit_adam"): _use_8bit_adam,
    (KOHYA, "resolution"): _resolution,
    (KOHYA, "clip_skip"): _kohya_clip_skip,
    (KOHYA, "v2"): lambda t, f: bare_flag(t, f, "model.family", "sd2"),
    (KOHYA, "v_parameterization"): lambda t, f: bare_flag(t, f, "model.prediction_type", "v_prediction"),
    (KOHYA, "random_crop"): lambda t, f: bare_flag(t, f, "dataset.center_crop", False),
    (KOHYA, "network_train_unet_only"): lambda t, f: bare_flag(t, f, "network.train_text_encoder", False),
    (DIFFUSERS, "use_dora"): lambda t, f: bare_flag(t, f, "network.algo", "dora"),
    (KOHYA, "torch_compile"): lambda t, f: bare_flag(t, f, "training.torch_compile", True),
    (KOHYA, "dynamo_backend"): _dynamo_backend,
    (KOHYA, "sdpa"): lambda t, f: bare_flag(t, f, "training.attention", "sdpa"),
    (KOHYA, "fp8_base"): lambda t, f: bare_flag(t, f, "model.quantize_base", "fp8"),
    (KOHYA, "fp8_base_unet"): lambda t, f: bare_flag(t, f, "model.quantize_base", "fp8"),
    (KOHYA, "mem_eff_attn"): lambda t, f: bare_flag(t, f, "training.attention", "sdpa"),
    ("*", "xformers"): lambda t, f: bare_flag(t, f, "training.attention", "xformers"),
    (DIFFUSERS, "enable_xformers_memory_efficient_attention"): lambda t, f: bare_flag(t, f, "training.attention",
                                                                                    "xformers"),
    (KOHYA, "save_precision"): _save_precision,
    (KOHYA, "save_model_as"): _save_model_as,
    (KOHYA, "log_with"): log_with,
    (DIFFUSERS, "report_to"): log_with,
    ("*", "logging_dir"): _logging_dir,
    ("*", "text_encoder_lr"): _text_encoder_lr,
    (KOHYA, "lr_warmup_steps"): _lr_warmup_steps,
    ("*", "max_grad_norm"): _max_grad_norm,
    ("*", "resume"): _resume,
    ("*", "resume_from_checkpoint"): _resume,
    (DIFFUSERS, "output_dir"): output_dir_split,
    (DIFFUSERS, "prodigy_decouple"): _prodigy_bool,
    (DIFFUSERS, "prodigy_use_bias_correction"): _prodigy_bool,
    (DIFFUSERS, "prodigy_safeguard_warmup"): _prodigy_bool,
    (DIFFUSERS, "checkpoints_total_limit"): _checkpoints_total_limit,
    (DIFFUSERS, "with_prior_preservation"): paired_prior_preservation,
    **flux_handlers(),  # recorded, then translated together by `flux_rules`
}


def translate_flag(t: Translation, flag: Flag, handlers: Mapping[str, Handler] | None = None) -> None:
    """Map one flag: by its handler when it has one (`handlers`, by flag name, first), else by the alias table."""
    handler = (handlers or {}).get(flag.name) or _HANDLERS.get((t.tool, flag.name)) or _HANDLERS.get(("*", flag.name))
    if handler is not None:
        try:
            handler(t, flag)
        except Unmappable as e:
            t.skip(flag.text, str(e))
        return
    alias = t.alias(flag.name)
    if alias is None:
        t.skip(flag.text, f"not a {t.tool} flag loraforge knows (check the spelling)")
        return
    t.apply(alias, flag.value, flag.text)


# ------------------------------------------------------------------------------------------------------- kohya
_LYCORIS_ALGOS = {"lora": "locon", "locon": "locon", "loha": "loha", "lokr": "lokr"}
_FLUX_TARGETS = ("FLUX.1: loraforge adapts what networks.lora_flux does, every linear layer of the double and single "
                 "blocks (attention, MLPs, modulation), with q/k/v fused in the file as sd-scripts writes them")


def _kohya_network(t: Translation, family: str) -> None:
    module = t.network_module
    args = dict(t.network_args)
    module_text = t.given["network_module"].text if "network_module" in t.given else "--network_module (not given)"
    note = t.alias("network_module").note
    if module == "lycoris.kohya":
        algo, algo_text = args.pop("algo", ("lora", module_text))
        dora, dora_text = args.pop("dora_wd", ("false", ""))
        if scalar(bool, dora):
            t.set("network.algo", "dora", dora_text)
        elif algo.lower() in _LYCORIS_ALGOS:
            t.set("network.algo", _LYCORIS_ALGOS[algo.lower()], algo_text)
        else:
            t.skip(algo_text, f"LyCORIS algo {algo!r} has no loraforge equivalent (lora/locon, loha, lokr and "
                              "dora_wd=True map); 'locon' is written")
            t.set("network.algo", "locon", module_text, default=True)
        preset, preset_text = args.pop("preset", ("full", module_text + " (LyCORIS' default preset)"))
        if family == "flux":  # the presets name UNet classes; FLUX's default targets are its blocks' linear layers
            t.skip(preset_text, _FLUX_TARGETS)
        else:
            t.set("network.preset", preset, preset_text)
            t.differ(module_text, note)
    else:
        if module not in ("networks.lora", "networks.lora_flux", None):
            t.skip(module_text, f"no equivalent network module {module!r} (networks.lora and lycoris.kohya map); "
                                "kohya's plain LoRA (networks.lora) is written")
        elif module is None:
            t.notes.append("no --network_module: kohya requires one; networks.lora is assumed")
        conv = args.get("conv_dim", ("0", ""))[0]
        convs = conv.strip() not in ("", "0", "None")
        t.set("network.algo", "locon" if convs else "lora", module_text, default=module is None)
        if family == "flux":
            t.differ(module_text, _FLUX_TARGETS)
        else:
            t.set("network.preset", "full" if convs else "attn-mlp", module_text, default=module is None)
            t.differ(module_text, note)
    for key, (value, text) in args.items():
        alias = t.alias(key, NETWORK_ARGS)
        if alias is None:
            t.skip(text, "not a network_args key loraforge knows")
        elif key == "wd_on_output":
            if scalar(bool, value):
                t.set("network.dora_axis", "output", text)
        elif key.endswith(("block_dims", "block_alphas")):
            _block_list(t, alias, value, text, family)
        else:
            t.apply(alias, value, text)


def _block_list(t: Translation, alias: Alias, value: str, text: str, family: str) -> None:
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


def _kohya_optimizer_args(t: Translation) -> None:
    custom = "." in str(t.value("optimizer.type") or "")  # a class by import path gets its keywords as written
    for key, (value, text) in t.optimizer_args.items():
        alias = t.alias(key, OPTIMIZER_ARGS)
        if alias is None or alias.key == "optimizer.optimizer_args" or (custom and key != "weight_decay"):
            _optimizer_arg(t, key, value, text)
            if alias is None and not custom:
                t.notes.append(f"{text}: passed to the optimizer as written; training checks it against the "
                               "optimizer's signature before it starts")
        elif key == "betas":
            parts = [p for p in value.strip("()[] ").split(",") if p.strip()]
            if len(parts) != 2:
                t.skip(text, "expected betas=b1,b2")
                continue
            t.set("optimizer.adam_beta1", parts[0], text)
            t.set("optimizer.adam_beta2", parts[1], text)
        else:
            t.apply(alias, value, text)


def _optimizer_arg(t: Translation, key: str, value: str, text: str) -> None:
    """`d_coef=2` -> optimizer.optimizer_args.d_coef = 2, the value read as kohya reads it (a Python literal, else
    the text)."""
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass
    if isinstance(value, tuple):
        value = list(value)
    if value is None:
        t.skip(text, "None: leave the keyword out for the optimizer's default")
        return
    t.set_entry("optimizer.optimizer_args", key, value, text)


def kohya_rules(t: Translation, family: str) -> None:
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
    if t.value("dataset.face_crop_aug_range") is not None:
        for key, flag in (("dataset.enable_bucket", "--enable_bucket"), ("dataset.cache_latents", "--cache_latents"),
                          ("dataset.cache_latents_to_disk", "--cache_latents_to_disk")):
            if t.value(key):
                t.unset("dataset.face_crop_aug_range", f"kohya does not crop around the face with {flag} (and "
                                                       "loraforge refuses the combination)")
                break
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
def diffusers_rules(t: Translation) -> None:
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
