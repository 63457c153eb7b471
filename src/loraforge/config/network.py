"""`[network]`: the adapter that is trained.

The option names follow the LyCORIS / sd-scripts `network_args` users already pass (`conv_dim`, `use_tucker`,
`block_dims`, ...), so a kohya command line translates key for key. Each `algo` has its own options class (a pydantic
discriminated union on `algo`, like peft's one config class per method), so an option of another algo cannot be
written: it is refused with the field, the algo and the fix. What depends on the model (the number of block-wise
values) is checked again when the network is built.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Discriminator, Field, Tag, create_model, model_validator

from ..families import FAMILIES
from .base import Section

Algo = Literal["lora", "locon", "loha", "lokr", "dora", "none"]
Preset = Literal["full", "full-lin", "attn-mlp", "attn-only", "unet-transformer-only", "unet-convblock-only"]

# Block-wise lists: SD 1.x / 2.x = IN0-11, MID, OUT0-11; SDXL = emb, IN0-8, MID0-2, OUT0-8, out (kohya.md §2.1).
BLOCK_COUNTS = {name: f.block_count for name, f in FAMILIES.items()}
DEFAULT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
DEFAULT_TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]

_BLOCKS_DOC = (
    "25 values for SD 1.x/2.x (IN0-IN11, MID, OUT0-OUT11: LDM `input_blocks.N`, `middle_block`, `output_blocks.N`) "
    "or 23 for SDXL (0 = time/label embeddings, 1-9 = `input_blocks.0-8`, 10-12 = `middle_block.0-2`, 13-21 = "
    "`output_blocks.0-8`, 22 = `out`), as in sd-scripts"
)


# Options that are shared by several algos (each algo's class below lists the ones it takes).
_DROPOUT = Field(
    0.0,
    ge=0.0,
    lt=1.0,
    description=(
        "Dropout on the adapter path during training: on its input for `lora` (peft), on its output for "
        "`locon`/`loha`/`lokr` (LyCORIS). Not available with `dora` (the weight is rebuilt; use the other dropouts)."
    ),
)
_LORAPLUS = Field(
    None,
    gt=0,
    description=(
        "LoRA+: the up matrices (`lora_up`; LoHa's output-side `hada_w?_a`) train at learning rate × this ratio "
        "(16 is the paper's suggestion). Not for `lokr`."
    ),
)
_TUCKER = Field(
    False,
    description=(
        "Tucker-decompose k×k convolutions (1×1 down, k×k core, 1×1 up): `locon`, `loha`, `dora` (not `lokr`: "
        "ComfyUI cannot merge its Tucker cores). No effect on linear and 1×1 layers. diffusers cannot load it."
    ),
)

# What an option reads as on an algo that does not take it: the value that means "off". A config may still write
# it at that value (the TOML users wrote before per-algo classes stays valid); any other value is refused with the
# advice in `_ADVICE`.
OFF_VALUES: dict[str, object] = {
    "conv_dim": None, "conv_alpha": None, "conv_block_dims": None, "conv_block_alphas": None, "use_tucker": False,
    "use_scalar": False, "dropout": 0.0, "rank_dropout": 0.0, "rank_dropout_scale": False, "module_dropout": 0.0,
    "train_norm": False, "factor": -1, "decompose_both": False, "full_matrix": False, "dora_axis": "input",
    "loraplus_lr_ratio": None, "init_lora_weights": "default",
}
_LYCORIS_ONLY = ("use_tucker", "use_scalar", "rank_dropout", "rank_dropout_scale", "module_dropout", "train_norm")
_CONV = ("conv_dim", "conv_alpha", "conv_block_dims", "conv_block_alphas")
_LOKR = ("factor", "decompose_both", "full_matrix")

# (options, the algos the advice is for (None: any algo without them), advice); `{options}` names the ones set.
_ADVICE: list[tuple[tuple[str, ...], tuple[str, ...] | None, str]] = [
    (_LYCORIS_ONLY, ("lora",),
     "{options} need the LyCORIS engine, not peft: use network.algo = 'locon' (the same LoRA file layout)"),
    (_CONV, ("lora",), "{options} set, but algo = 'lora' adapts linear and 1×1 layers only: use network.algo = "
                       "'locon' to train k×k convolutions"),
    (("use_tucker",), ("lokr",),
     "network.use_tucker with algo = 'lokr': ComfyUI 0.19.3 cannot merge a LoKr Tucker core on k×k convolutions (it "
     "logs an error and leaves the layer unpatched); remove use_tucker (or use locon/loha)"),
    (("init_lora_weights",), None,
     "network.init_lora_weights applies to algo = 'lora' only (algo is {algo!r}); remove it"),
    (_LOKR, None, "{options} are LoKr options; set network.algo = 'lokr' or remove them"),
    (("dora_axis",), None, "network.dora_axis applies to algo = 'dora' only"),
    (("dropout",), ("dora",), "network.dropout has no effect with algo = 'dora' (LyCORIS rebuilds the weight and "
                              "ignores it): use network.rank_dropout or network.module_dropout"),
    (("loraplus_lr_ratio",), ("lokr",), "network.loraplus_lr_ratio: LoKr has no up/down pair for LoRA+ to speed up; "
                                        "remove it or use lora/locon/loha/dora"),
]


def _advice(algo: str, options: list[str]) -> list[str]:
    """The messages for `options` set on an algo that does not take them, one per advice, in `_ADVICE` order."""
    out, left = [], list(options)
    for names, algos, text in _ADVICE:
        hit = [o for o in left if o in names]
        if hit and (algos is None or algo in algos):
            out.append(text.format(options="network." + ", network.".join(hit), algo=algo))
            left = [o for o in left if o not in hit]
    out += [f"network.{o} does not apply to algo = {algo!r}; remove it" for o in left]
    return out


class NetworkBase(Section):
    """Options every algo takes. Each algo has its own class (below) with the options that apply to it, so a
    combination that cannot work cannot be written; an option of another algo reads as its `OFF_VALUES` value."""

    algo: Algo = Field(
        "lora",
        description=(
            "Adapter kind. `lora`: low-rank update of linear and 1×1 layers (peft; sd-scripts `networks.lora`). "
            "`locon`: LoRA that also adapts 3×3 convolutions (down conv with the layer's kernel, 1×1 up). `loha`: "
            "Hadamard product of two low-rank updates. `lokr`: Kronecker product (`factor`, `decompose_both`, "
            "`full_matrix`). `dora`: weight-decomposed LoRA/LoCon (`dora_axis`). `locon`, `loha`, `lokr` and `dora` "
            "use LyCORIS modules; every file is written in the kohya/LyCORIS layout (see docs/networks.md). `none`: no "
            "adapter, textual inversion alone (needs `training.train_text_encoder_ti`): only the new token embeddings "
            "train and only the embeddings file is written."
        ),
    )
    rank: int = Field(16, ge=1, le=1024, description="Rank (kohya `network_dim`, diffusers `rank`) of linear and 1×1 layers.")
    alpha: float | None = Field(
        None,
        gt=0,
        description=(
            "Alpha; the update is scaled by alpha / rank (alpha / √rank with `rs_lora`). Unset: equal to the rank of "
            "each module (scale 1, diffusers' convention). kohya's default is 1."
        ),
    )
    preset: Preset | None = Field(
        None,
        description=(
            "Which modules get an adapter, as LyCORIS names the sets: `full` (every linear and conv of the UNet's "
            "transformer, resnet and sampler blocks, conv_in/conv_out, the time (and SDXL add) embeddings; text-"
            "encoder attention + MLP), `full-lin` (`full` without k×k convs, samplers and conv_in/out), `attn-mlp` "
            "(kohya's LoRA targets: every linear/1×1 of the transformer blocks; text-encoder attention + MLP), "
            "`attn-only` (attention q/k/v/out; text-encoder q/k/v/out), `unet-transformer-only` (`attn-mlp` without "
            "text encoders), `unet-convblock-only` (resnets, samplers, conv_in/out). Unset: `target_modules` and "
            "`text_encoder_target_modules` decide."
        ),
    )
    target_modules: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TARGETS),
        description=(
            "With no `preset`: UNet modules that get an adapter, matched by name suffix. Default: attention "
            "q/k/v/out. Add `proj_in`, `proj_out`, `ff.net.0.proj`, `ff.net.2` for the whole transformer blocks, "
            "`conv1`, `conv2` for the resnet convolutions (3×3: `locon` and the other LyCORIS algos)."
        ),
    )
    train_text_encoder: bool = Field(
        False, description="Also train the text encoder(s) (both CLIPs for SDXL), on the modules the preset names."
    )
    text_encoder_target_modules: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TE_TARGETS),
        description="With no `preset`: text-encoder modules that get an adapter when `train_text_encoder` is on.",
    )
    block_dims: list[int] | None = Field(
        None,
        description=(
            f"Per-block rank of the UNet's linear and 1×1 layers: {_BLOCKS_DOC}. A 0 removes the block's modules. "
            "Modules outside these blocks and the text encoders use `rank`."
        ),
    )
    block_alphas: list[float] | None = Field(
        None, description="Per-block alpha, same layout as `block_dims` (needs it). Unset: `alpha`."
    )
    block_lr_weights: list[float] | None = Field(
        None,
        description=(
            "Per-block learning-rate multipliers of the UNet adapter (same layout as `block_dims`): each block's "
            "modules train at `unet_lr` × weight; a 0 removes the block's modules (sd-scripts' block lr weights)."
        ),
    )
    rs_lora: bool = Field(
        False,
        description=(
            "rsLoRA: scale by alpha / √rank instead of alpha / rank. Files store alpha·√rank so every consumer "
            "computes the same scale."
        ),
    )

    def __getattr__(self, name: str):
        if name in OFF_VALUES and name not in type(self).model_fields:
            return OFF_VALUES[name]
        return super().__getattr__(name)

    @model_validator(mode="before")
    @classmethod
    def _options_of_other_algos(cls, data):
        """Refuse an option this algo does not take (with the advice that fits); drop one written at its off value."""
        if not isinstance(data, dict):
            return data
        foreign = [k for k in data if k in OFF_VALUES and k not in cls.model_fields]
        set_ = [k for k in foreign if data[k] != OFF_VALUES[k]]
        if set_:
            raise ValueError("; ".join(_advice(cls.model_fields["algo"].default, set_)))
        return {k: v for k, v in data.items() if k not in foreign}

    @model_validator(mode="after")
    def _check_combinations(self) -> "NetworkBase":
        problems = self._problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _problems(self) -> list[str]:
        out: list[str] = []
        if self.preset is not None:
            custom = [n for n in ("target_modules", "text_encoder_target_modules") if n in self.model_fields_set]
            if custom:
                out.append(
                    f"network.preset = {self.preset!r} and network.{', network.'.join(custom)} both choose modules: "
                    "keep one of them"
                )
            if self.train_text_encoder and self.preset.startswith("unet-"):
                out.append(
                    f"network.preset = {self.preset!r} adapts no text-encoder module but train_text_encoder = true: "
                    "pick 'attn-mlp', 'attn-only', 'full' or 'full-lin', or set train_text_encoder = false"
                )
        return out + _block_problems(self)


class LoraNetwork(NetworkBase):
    """`algo = "lora"`: peft LoRA on linear and 1×1 layers."""

    algo: Literal["lora"] = "lora"
    dropout: float = _DROPOUT
    loraplus_lr_ratio: float | None = _LORAPLUS
    init_lora_weights: Literal["default", "gaussian"] = Field(
        "default",
        description=(
            "`lora` only: how the down matrices start: `default` is Kaiming-uniform, `gaussian` is N(0, 1/rank). "
            "Up starts at 0."
        ),
    )


class LycorisNetwork(NetworkBase):
    """Options of every LyCORIS algo (locon, loha, lokr, dora)."""

    conv_dim: int | None = Field(
        None,
        ge=0,
        le=1024,
        description=(
            "Rank of k×k (3×3) convolutions (LyCORIS algos). Unset: `rank`. 0: k×k convolutions are not adapted."
        ),
    )
    conv_alpha: float | None = Field(
        None, gt=0, description="Alpha of k×k convolutions. Unset: `alpha` (or each module's rank)."
    )
    conv_block_dims: list[int] | None = Field(
        None,
        description="Per-block rank of k×k convolutions, same layout as `block_dims`. Unset: `conv_dim` everywhere.",
    )
    conv_block_alphas: list[float] | None = Field(
        None, description="Per-block alpha of k×k convolutions (needs `conv_block_dims`). Unset: `conv_alpha`."
    )
    use_scalar: bool = Field(
        False,
        description="A trained scalar on each update, starting at 0 (the up weights then start non-zero). LyCORIS algos.",
    )
    rank_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description=(
            "Drop ranks during training (LyCORIS algos): `locon` masks the rank channels; `loha`/`lokr`/`dora` mask "
            "rows of the update, as LyCORIS defines it."
        ),
    )
    rank_dropout_scale: bool = Field(
        False, description="Rescale the `rank_dropout` mask to mean 1 (LyCORIS); needs `rank_dropout`."
    )
    module_dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="Skip a whole module with this probability at each training step (LyCORIS algos)."
    )
    train_norm: bool = Field(
        False,
        description=(
            "Also train the UNet's normalisation layers inside the selected blocks (LyCORIS `w_norm`/`b_norm`). Not "
            "the text encoders': ComfyUI has no key for their norms."
        ),
    )

    def _problems(self) -> list[str]:
        out = super()._problems()
        if self.rank_dropout_scale and self.rank_dropout == 0:
            out.append("network.rank_dropout_scale needs network.rank_dropout > 0")
        return out


class LoConNetwork(LycorisNetwork):
    """`algo = "locon"`: LoRA that also adapts k×k convolutions."""

    algo: Literal["locon"] = "locon"
    use_tucker: bool = _TUCKER
    dropout: float = _DROPOUT
    loraplus_lr_ratio: float | None = _LORAPLUS


class LoHaNetwork(LycorisNetwork):
    """`algo = "loha"`: Hadamard product of two low-rank updates."""

    algo: Literal["loha"] = "loha"
    use_tucker: bool = _TUCKER
    dropout: float = _DROPOUT
    loraplus_lr_ratio: float | None = _LORAPLUS


class LoKrNetwork(LycorisNetwork):
    """`algo = "lokr"`: Kronecker product."""

    algo: Literal["lokr"] = "lokr"
    dropout: float = _DROPOUT
    factor: int = Field(
        -1,
        description=(
            "LoKr: split each dimension as (f, dim/f) with f closest to `factor`; -1 balances the two Kronecker "
            "factors."
        ),
    )
    decompose_both: bool = Field(False, description="LoKr: make the small Kronecker factor low-rank too.")
    full_matrix: bool = Field(
        False, description="LoKr: full (not low-rank) Kronecker factors (LyCORIS also falls back to full when rank ≥ half the factor)."
    )

    def _problems(self) -> list[str]:
        out = super()._problems()
        if self.factor == 0 or self.factor < -1:
            out.append(f"network.factor = {self.factor}: use -1 (balanced) or a positive factor")
        return out


class DoRANetwork(LycorisNetwork):
    """`algo = "dora"`: weight-decomposed LoRA/LoCon."""

    algo: Literal["dora"] = "dora"
    use_tucker: bool = _TUCKER
    dora_axis: Literal["input", "output"] = Field(
        "input",
        description=(
            "DoRA magnitude axis. `input` (default): one norm per input column, stored as `dora_scale` [1, in, 1, 1]; "
            "ComfyUI and A1111 reproduce it exactly. `output`: per output row (the paper's axis, LyCORIS' default) "
            "[out, 1, 1, 1]; ComfyUI 0.19 mis-merges it and A1111 1.10 has no output axis (wrong weights)."
        ),
    )
    loraplus_lr_ratio: float | None = _LORAPLUS


class NoNetwork(NetworkBase):
    """`algo = "none"`: no adapter; textual inversion alone (the new token embeddings of pivotal tuning train)."""

    algo: Literal["none"] = "none"

    def _problems(self) -> list[str]:
        # rank and alpha are let through unused: the presets set them
        unused = [n for n in sorted(self.model_fields_set - {"algo", "rank", "alpha"})
                  if getattr(self, n) != type(self).model_fields[n].get_default(call_default_factory=True)]
        return [f"network.{', network.'.join(unused)} set, but network.algo = 'none' trains no adapter (textual "
                "inversion alone): remove them, or choose an algo such as 'lora'"] if unused else []


NETWORK_CLASSES: dict[str, type[NetworkBase]] = {
    cls.model_fields["algo"].default: cls
    for cls in (LoraNetwork, LoConNetwork, LoHaNetwork, LoKrNetwork, DoRANetwork, NoNetwork)
}


def _algo_of(value) -> str | None:
    """The union's tag: `algo` as written (any case; unset: lora), or the algo of a built config."""
    if isinstance(value, dict):
        return str(value.get("algo", "lora")).strip().lower()
    return getattr(value, "algo", None)


# `[network]`: one of the per-algo classes, chosen by `algo` (pydantic's discriminated union).
NetworkConfig = Annotated[
    Union[tuple(Annotated[cls, Tag(algo)] for algo, cls in NETWORK_CLASSES.items())],  # noqa: UP007
    Discriminator(
        _algo_of,
        custom_error_type="network_algo",
        custom_error_message=f"unknown algo; choose one of {', '.join(map(repr, NETWORK_CLASSES))}",
    ),
]

# Every `[network]` key with its description, in one model (docs, key suggestions and the importer read it; it
# validates nothing): the shared options, then each algo's own.
NetworkOptions = create_model(
    "NetworkOptions",
    __base__=Section,
    __doc__="The adapter: `algo` chooses its kind; an option that does not apply to the chosen algo is refused.",
    **{
        name: (field.annotation, field)
        for cls in (NetworkBase, *NETWORK_CLASSES.values())
        for name, field in cls.model_fields.items()
        if name != "algo" or cls is NetworkBase
    },
)


def every_option(net: NetworkBase) -> dict:
    """All `[network]` options as JSON values, another algo's at its off value: what a dumped config lists (the same
    keys whatever the algo, as before the per-algo classes, so the configs stored in checkpoints compare)."""
    values = {**OFF_VALUES, **net.model_dump(mode="json")}
    return {k: values[k] for k in NetworkOptions.model_fields if values[k] is not None}


def _block_problems(c: NetworkBase) -> list[str]:
    out: list[str] = []
    lists = {n: getattr(c, n) for n in ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "block_lr_weights")}
    given = {n: v for n, v in lists.items() if v is not None}
    for name, values in given.items():
        if len(values) not in (25, 23):
            out.append(
                f"network.{name} has {len(values)} values; it needs 25 for SD 1.x/2.x (IN0-11, MID, OUT0-11) or 23 "
                "for SDXL (emb, IN0-8, MID0-2, OUT0-8, out)"
            )
        elif any(v < 0 for v in values):
            out.append(f"network.{name}: values must be ≥ 0")
    lengths = {len(v) for v in given.values() if len(v) in (25, 23)}
    if len(lengths) > 1:
        out.append(f"network.{', network.'.join(given)} must all have the same length (25 for SD 1.x/2.x, 23 for SDXL)")
    for alphas, dims in (("block_alphas", "block_dims"), ("conv_block_alphas", "conv_block_dims")):
        if lists[alphas] is not None and lists[dims] is None:
            out.append(f"network.{alphas} needs network.{dims}")
    for name in ("block_alphas", "conv_block_alphas"):
        values = lists[name]
        if values is not None and any(v == 0 for v in values):
            out.append(f"network.{name}: an alpha of 0 scales the update to nothing; use a positive alpha")
    return out


def block_count_problem(c: NetworkBase, family: str) -> str | None:
    """The error for block-wise lists whose length does not fit `family` (sd15, sd2, sdxl, flux), else None."""
    want = BLOCK_COUNTS[family]
    for name in ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "block_lr_weights"):
        values = getattr(c, name)
        if values is not None and len(values) != want:
            layout = {25: "SD 1.x/2.x (IN0-11, MID, OUT0-11)", 23: "SDXL (emb, IN0-8, MID0-2, OUT0-8, out)"}.get(
                want, "FLUX.1 (19 double blocks, then 38 single blocks)")
            hint = ""
            if len(values) == BLOCK_COUNTS["sd15"]:  # (the family wants 23)
                hint = ("; 25 values are the SD 1.x layout that some kohya guides write for SDXL too (kohya's SDXL "
                        "LoRA takes 23 as well): write 23, or let `loraforge import` turn 25 equal values into 23")
            return f"network.{name} has {len(values)} values but the model is {family}: {layout} takes {want}{hint}"
    return None
