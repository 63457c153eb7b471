"""The rules of `loraforge import` for cloneofsimo/lora: `lora_pti` (python-fire flags: `--flag=value`,
`--flag value`, a bare `--flag` for true, `--noflag` for false) and `train_lora_dreambooth.py` (argparse).

lora_pti's two phases (textual inversion for `max_train_steps_ti` steps, then the LoRA for `max_train_steps_tuning`)
become loraforge's phased pivotal tuning (`training.ti_steps`) in one run of their sum; its placeholder tokens
become `training.token_names`, its templates a fixed `dataset.instance_prompt`.
"""

from __future__ import annotations

import ast

from .aliases import find
from .aliases_cloneofsimo import (
    CLIP_CLASSES,
    CLONEOFSIMO,
    CLONEOFSIMO_DEFAULTS,
    PTI,
    TEMPLATES,
    UNET_CLASSES,
    UNET_DEFAULT_CLASSES,
)
from .command_line import Flag
from .import_rules import Handler, bare_flag, output_dir_split, paired_prior_preservation
from .import_translation import Translation, Unmappable, scalar

_LATER = ("perform_inversion", "max_train_steps_ti", "max_train_steps_tuning", "scale_lr", "lora_scale")
_DEFAULT_TOKEN_PLACE = "DUMMY"  # the word lora_pti replaces with the tokens in file-name captions


def fire_flags(flags: list[Flag]) -> list[Flag]:
    """python-fire's `--noflag` is `--flag=False` (when `noflag` is not a flag itself)."""
    out = []
    for f in flags:
        name = f.name[2:]
        known = find(name, (CLONEOFSIMO,)) and not find(f.name, (CLONEOFSIMO,))
        if f.name.startswith("no") and f.value is True and known:
            f = Flag(name, "False", f.text)
        out.append(f)
    return out


# ---- handlers
def _nothing(t: Translation, flag: Flag) -> None:
    """Read by `cloneofsimo_rules`, which needs the other flags too."""


def _modules(flag: Flag, classes: dict[str, list[str]]) -> list[str]:
    """`{"CrossAttention", "GEGLU"}` (fire parses it as a Python set), `CrossAttention,GEGLU` -> module suffixes."""
    value = flag.value if isinstance(flag.value, list) else str(flag.value)
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            value = value.replace("|", ",").split(",")
    names = [value] if isinstance(value, str) else [str(v) for v in value]
    names = [n.strip(" {}[]()'\"") for n in names if n.strip(" {}[]()'\"")]
    unknown = [n for n in names if n not in classes]
    if unknown or not names:
        raise Unmappable(f"no loraforge equivalent of module class {', '.join(unknown) or '(none)'}; the classes "
                         f"that map: {', '.join(classes)}")
    return list(dict.fromkeys(m for c in classes if c in names for m in classes[c]))  # fire's sets have no order


def _targets(t: Translation, flag: Flag) -> None:
    alias = t.alias(flag.name)
    classes = UNET_CLASSES if alias.key == "network.target_modules" else CLIP_CLASSES
    t.set(alias.key, _modules(flag, classes), flag.text)
    t.differ(flag.text, alias.note)


def _placeholder_tokens(t: Translation, flag: Flag) -> None:
    tokens = [p.strip() for p in str(flag.value).split("|") if p.strip()]
    if flag.value is True or not tokens:
        raise Unmappable("no tokens: lora_pti then learns none")
    t.set("training.token_names", tokens, flag.text)


def _placeholder_token_at_data(t: Translation, flag: Flag) -> None:
    word, bar, _ = str(flag.value).partition("|")
    if not bar or not word.strip():
        raise Unmappable("lora_pti takes `word|tokens` (e.g. \"<krk>|<s1><s2>\")")
    t.set("training.token_abstraction", word.strip(), flag.text)
    t.differ(flag.text, t.alias(flag.name).note)


def _initializer_tokens(t: Translation, flag: Flag) -> None:
    words = [w.strip() for w in str(flag.value).split("|") if w.strip() and not w.strip().startswith("<rand")]
    if flag.value is True or not words:
        raise Unmappable("a random start (`<rand-...>`): loraforge starts at random when training.initializer_token "
                         "is unset")
    t.set("training.initializer_token", words[0], flag.text)
    if len(set(words)) > 1 or "<rand" in str(flag.value):
        t.differ(flag.text, t.alias(flag.name).note)


def _log_wandb(t: Translation, flag: Flag) -> None:
    bare_flag(t, flag, "output.log_with", "wandb")
    if t.value("output.log_with") == "wandb":
        t.notes.append(f"{flag.text}: Weights & Biases is an optional extra: pip install 'loraforge[wandb]', then "
                       "`wandb login`")


def _pti_differs(t: Translation, flag: Flag) -> None:
    """A flag of both scripts whose meaning differs in lora_pti only."""
    alias = t.alias(flag.name)
    t.set(alias.key, flag.value, flag.text)
    if t.script == PTI:
        t.differ(flag.text, alias.note)


def _use_template(t: Translation, flag: Flag) -> None:
    template = TEMPLATES.get(str(flag.value).lower())
    if template is None:
        raise Unmappable(f"lora_pti's templates are {' and '.join(TEMPLATES)}")
    # the placeholder the tokens replace; written by cloneofsimo_rules when --placeholder_token_at_data names another
    t.set("dataset.instance_prompt", template.format("TOK"), flag.text)
    t.differ(flag.text, t.alias(flag.name).note)


HANDLERS: dict[str, Handler] = {
    **{name: _nothing for name in _LATER},
    "output_dir": output_dir_split,
    "with_prior_preservation": paired_prior_preservation,
    "log_wandb": _log_wandb,
    "enable_xformers_memory_efficient_attention": lambda t, f: bare_flag(t, f, "training.attention", "xformers"),
    "use_xformers": lambda t, f: bare_flag(t, f, "training.attention", "xformers"),
    "lora_unet_target_modules": _targets,
    "lora_clip_target_modules": _targets,
    "placeholder_tokens": _placeholder_tokens,
    "placeholder_token_at_data": _placeholder_token_at_data,
    "initializer_tokens": _initializer_tokens,
    "use_template": _use_template,
    **{name: _pti_differs for name in ("instance_data_dir", "gradient_accumulation_steps", "lr_scheduler")},
}


# ---- after every flag
def _given(t: Translation, name: str) -> tuple[object, str] | None:
    """The value and text of a flag read by the rules, or the script's default for it; None when neither."""
    flag = t.given.get(name)
    if flag is not None:
        return flag.value, flag.text
    default = CLONEOFSIMO_DEFAULTS[t.script].get(name)
    return None if default is None else (default, f"--{name}={default} ({t.script}'s default)")


def _phases(t: Translation) -> None:
    """lora_pti: inversion for max_train_steps_ti steps, then the LoRA for max_train_steps_tuning."""
    ti_value, ti_text = _given(t, "max_train_steps_ti") or (1000, "--max_train_steps_ti=1000 (lora_pti's default)")
    tune_value, tune_text = (_given(t, "max_train_steps_tuning")
                             or (1000, "--max_train_steps_tuning=1000 (lora_pti's default)"))
    try:
        ti, tuning = scalar(int, ti_value), scalar(int, tune_value)
    except Unmappable as e:
        t.skip(ti_text if "max_train_steps_ti" in t.given else tune_text, str(e))
        return
    perform = t.given.get("perform_inversion")
    inversion = scalar(bool, perform.value) if perform is not None else True
    inversion_text = perform.text if perform is not None else "--perform_inversion=True (lora_pti's default)"
    tokens = t.value("training.token_names")
    if inversion and not tokens:
        t.skip(inversion_text, "no --placeholder_tokens: lora_pti has no token to learn, its inversion steps train "
                               "nothing; the import trains the LoRA alone for max_train_steps_tuning steps")
        inversion = False
    if not inversion:
        t.set("training.max_train_steps", tuning, tune_text, default="max_train_steps_tuning" not in t.given)
        if perform is not None and not scalar(bool, perform.value):
            t.set("training.train_text_encoder_ti", False, perform.text)
        why = "no inversion phase (--perform_inversion=False or no --placeholder_tokens)"
        if "max_train_steps_ti" in t.given:
            t.skip(ti_text, why)
        for key in ("training.token_names", "training.token_abstraction", "training.initializer_token"):
            t.unset(key, why)
        return
    t.set("training.train_text_encoder_ti", True, inversion_text, default=perform is None)
    t.set("training.ti_steps", ti, ti_text, default="max_train_steps_ti" not in t.given)
    t.set("training.max_train_steps", ti + tuning, tune_text, default="max_train_steps_tuning" not in t.given)
    t.differ(tune_text, f"{t.alias('max_train_steps_tuning').note}: {ti} + {tuning} = {ti + tuning}")
    if not t.given.get("use_template") and t.value("training.token_abstraction") is None:
        t.set("training.token_abstraction", _DEFAULT_TOKEN_PLACE, "lora_pti's captions: the file names, 'DUMMY' "
              "replaced by the tokens", default=True)
    word, template = t.value("training.token_abstraction"), t.given.get("use_template")
    if word is not None and template is not None and t.value("dataset.instance_prompt") is not None:
        t.set("dataset.instance_prompt", TEMPLATES[str(template.value).lower()].format(word), template.text)


def _scale_lr(t: Translation) -> None:
    flag = t.given.get("scale_lr")
    if flag is None or not scalar(bool, flag.value):
        return
    batch = t.value("training.batch_size") or 1
    accumulation = t.value("training.gradient_accumulation_steps") or 1
    factor = batch * accumulation
    scaled = []
    for key in ("optimizer.learning_rate", "optimizer.unet_lr", "optimizer.text_encoder_lr", "optimizer.embedding_lr"):
        old = t.mapped.get(key)
        if old is not None:
            t.set(key, old.value * factor, old.flag, old.default)
            scaled.append(key.split(".")[1])
    t.differ(flag.text, f"{', '.join(scaled)} multiplied by train_batch_size × gradient_accumulation_steps = "
                        f"{batch} × {accumulation}, as {t.script} does")


def cloneofsimo_rules(t: Translation) -> None:
    text_encoder = t.value("network.train_text_encoder") or t.script == PTI and "train_text_encoder" not in t.given
    for name, value in CLONEOFSIMO_DEFAULTS[t.script].items():
        if name != "learning_rate_text" or text_encoder:
            t.default(name, value)
    if "lora_unet_target_modules" not in t.given:
        modules = list(dict.fromkeys(m for c in UNET_DEFAULT_CLASSES for m in UNET_CLASSES[c]))
        t.set("network.target_modules", modules, f"--lora_unet_target_modules={{{', '.join(UNET_DEFAULT_CLASSES)}}} "
              f"({t.script}'s default)", default=True)
        t.differ("--lora_unet_target_modules", t.alias("lora_unet_target_modules").note)
    if t.script == PTI:
        _phases(t)
        if "mixed_precision" not in t.given:
            t.set("training.mixed_precision", "no", "lora_pti trains in fp32", default=True)
        lora_scale = t.given.get("lora_scale")
        if lora_scale is not None:
            rank = t.value("network.rank")
            t.set("network.alpha", scalar(float, lora_scale.value) * rank, lora_scale.text)
            t.differ(lora_scale.text, t.alias("lora_scale").note)
        if t.value("training.train_text_encoder_ti") and not t.given.get("use_template") \
                and t.value("dataset.instance_prompt") is None:
            t.notes.append("lora_pti captions each image with its file name: write the captions into .txt files "
                           "next to the images (loraforge reads those), with the placeholder "
                           f"{t.value('training.token_abstraction') or 'TOK'!r} where the tokens go")
    elif "seed" not in t.given:
        t.differ("--seed (not given)", t.alias("seed").note)
    _scale_lr(t)
    if t.value("dataset.color_aug") and t.value("dataset.cache_latents"):
        t.unset("dataset.color_aug", "with cached latents each image is jittered once in cloneofsimo; loraforge "
                                     "refuses colour augmentation with dataset.cache_latents")
