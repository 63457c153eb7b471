"""`[network]`: the adapter that is trained.

The option names follow the LyCORIS / sd-scripts `network_args` users already pass (`conv_dim`, `use_tucker`,
`block_dims`, ...), so a kohya command line translates key for key. Combinations that cannot work are refused here,
with the field names and the fix; what depends on the model (the number of block-wise values) is checked again when
the network is built.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import Section

Algo = Literal["lora", "locon", "loha", "lokr", "dora"]
Preset = Literal["full", "full-lin", "attn-mlp", "attn-only", "unet-transformer-only", "unet-convblock-only"]

# Block-wise lists: SD 1.x / 2.x = IN0-11, MID, OUT0-11; SDXL = emb, IN0-8, MID0-2, OUT0-8, out (kohya.md §2.1).
BLOCK_COUNTS = {"sd15": 25, "sd2": 25, "sdxl": 23}
LYCORIS_ALGOS = ("locon", "loha", "lokr", "dora")
DEFAULT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
DEFAULT_TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]

_BLOCKS_DOC = (
    "25 values for SD 1.x/2.x (IN0-IN11, MID, OUT0-OUT11: LDM `input_blocks.N`, `middle_block`, `output_blocks.N`) "
    "or 23 for SDXL (0 = time/label embeddings, 1-9 = `input_blocks.0-8`, 10-12 = `middle_block.0-2`, 13-21 = "
    "`output_blocks.0-8`, 22 = `out`), as in sd-scripts"
)


class NetworkConfig(Section):
    algo: Algo = Field(
        "lora",
        description=(
            "Adapter kind. `lora`: low-rank update of linear and 1×1 layers (peft; sd-scripts `networks.lora`). "
            "`locon`: LoRA that also adapts 3×3 convolutions (down conv with the layer's kernel, 1×1 up). `loha`: "
            "Hadamard product of two low-rank updates. `lokr`: Kronecker product (`factor`, `decompose_both`, "
            "`full_matrix`). `dora`: weight-decomposed LoRA/LoCon (`dora_axis`). `locon`, `loha`, `lokr` and `dora` "
            "use LyCORIS modules; every file is written in the kohya/LyCORIS layout (see docs/networks.md)."
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
    conv_block_dims: list[int] | None = Field(
        None,
        description="Per-block rank of k×k convolutions, same layout as `block_dims`. Unset: `conv_dim` everywhere.",
    )
    conv_block_alphas: list[float] | None = Field(
        None, description="Per-block alpha of k×k convolutions (needs `conv_block_dims`). Unset: `conv_alpha`."
    )
    block_lr_weights: list[float] | None = Field(
        None,
        description=(
            "Per-block learning-rate multipliers of the UNet adapter (same layout as `block_dims`): each block's "
            "modules train at `unet_lr` × weight; a 0 removes the block's modules (sd-scripts' block lr weights)."
        ),
    )
    use_tucker: bool = Field(
        False,
        description=(
            "Tucker-decompose k×k convolutions (1×1 down, k×k core, 1×1 up): `locon`, `loha`, `dora` (not `lokr`: "
            "ComfyUI cannot merge its Tucker cores). No effect on linear and 1×1 layers. diffusers cannot load it."
        ),
    )
    use_scalar: bool = Field(
        False,
        description="A trained scalar on each update, starting at 0 (the up weights then start non-zero). LyCORIS algos.",
    )
    rs_lora: bool = Field(
        False,
        description=(
            "rsLoRA: scale by alpha / √rank instead of alpha / rank. Files store alpha·√rank so every consumer "
            "computes the same scale."
        ),
    )
    dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description=(
            "Dropout on the adapter path during training: on its input for `lora` (peft), on its output for "
            "`locon`/`loha`/`lokr` (LyCORIS). Not available with `dora` (the weight is rebuilt; use the other dropouts)."
        ),
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
    dora_axis: Literal["input", "output"] = Field(
        "input",
        description=(
            "DoRA magnitude axis. `input` (default): one norm per input column, stored as `dora_scale` [1, in, 1, 1]; "
            "ComfyUI and A1111 reproduce it exactly. `output`: per output row (the paper's axis, LyCORIS' default) "
            "[out, 1, 1, 1]; ComfyUI 0.19 mis-merges it and A1111 1.10 has no output axis (wrong weights)."
        ),
    )
    loraplus_lr_ratio: float | None = Field(
        None,
        gt=0,
        description=(
            "LoRA+: the up matrices (`lora_up`; LoHa's output-side `hada_w?_a`) train at learning rate × this ratio "
            "(16 is the paper's suggestion). Not for `lokr`."
        ),
    )
    init_lora_weights: Literal["default", "gaussian"] = Field(
        "default",
        description=(
            "`lora` only: how the down matrices start: `default` is Kaiming-uniform, `gaussian` is N(0, 1/rank). "
            "Up starts at 0."
        ),
    )

    @property
    def uses_lycoris(self) -> bool:
        return self.algo in LYCORIS_ALGOS

    @model_validator(mode="after")
    def _check_combinations(self) -> "NetworkConfig":
        problems = _problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _problems(c: NetworkConfig) -> list[str]:
    out: list[str] = []
    if c.algo == "lora":
        lycoris_only = [
            name
            for name, on in (
                ("use_tucker", c.use_tucker),
                ("use_scalar", c.use_scalar),
                ("rank_dropout", c.rank_dropout > 0),
                ("module_dropout", c.module_dropout > 0),
                ("train_norm", c.train_norm),
            )
            if on
        ]
        if lycoris_only:
            out.append(
                f"network.{', network.'.join(lycoris_only)} need the LyCORIS engine, not peft: use "
                "network.algo = 'locon' (the same LoRA file layout)"
            )
        conv = [n for n in ("conv_dim", "conv_alpha", "conv_block_dims", "conv_block_alphas") if getattr(c, n) is not None]
        if conv:
            out.append(
                f"network.{', network.'.join(conv)} set, but algo = 'lora' adapts linear and 1×1 layers only: use "
                "network.algo = 'locon' to train k×k convolutions"
            )
    else:
        if c.init_lora_weights != "default":
            out.append(f"network.init_lora_weights applies to algo = 'lora' only (algo is {c.algo!r}); remove it")
    if c.algo != "lokr":
        changed = [n for n, d in (("factor", -1), ("decompose_both", False), ("full_matrix", False)) if getattr(c, n) != d]
        if changed:
            out.append(f"network.{', network.'.join(changed)} are LoKr options; set network.algo = 'lokr' or remove them")
    elif c.factor == 0 or c.factor < -1:
        out.append(f"network.factor = {c.factor}: use -1 (balanced) or a positive factor")
    if c.algo == "lokr" and c.use_tucker:
        out.append(
            "network.use_tucker with algo = 'lokr': ComfyUI 0.19.3 cannot merge a LoKr Tucker core on k×k "
            "convolutions (it logs an error and leaves the layer unpatched); remove use_tucker (or use locon/loha)"
        )
    if c.algo != "dora" and c.dora_axis != "input":
        out.append("network.dora_axis applies to algo = 'dora' only")
    if c.algo == "dora" and c.dropout > 0:
        out.append(
            "network.dropout has no effect with algo = 'dora' (LyCORIS rebuilds the weight and ignores it): use "
            "network.rank_dropout or network.module_dropout"
        )
    if c.algo == "lokr" and c.loraplus_lr_ratio is not None:
        out.append("network.loraplus_lr_ratio: LoKr has no up/down pair for LoRA+ to speed up; remove it or use lora/locon/loha/dora")
    if c.rank_dropout_scale and c.rank_dropout == 0:
        out.append("network.rank_dropout_scale needs network.rank_dropout > 0")
    if c.preset is not None:
        custom = [n for n in ("target_modules", "text_encoder_target_modules") if n in c.model_fields_set]
        if custom:
            out.append(
                f"network.preset = {c.preset!r} and network.{', network.'.join(custom)} both choose modules: "
                "keep one of them"
            )
        if c.train_text_encoder and c.preset.startswith("unet-"):
            out.append(
                f"network.preset = {c.preset!r} adapts no text-encoder module but train_text_encoder = true: pick "
                "'attn-mlp', 'attn-only', 'full' or 'full-lin', or set train_text_encoder = false"
            )
    out += _block_problems(c)
    return out


def _block_problems(c: NetworkConfig) -> list[str]:
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


def block_count_problem(c: NetworkConfig, family: str) -> str | None:
    """The error for block-wise lists whose length does not fit `family` (sd15, sd2, sdxl), else None."""
    want = BLOCK_COUNTS[family]
    for name in ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "block_lr_weights"):
        values = getattr(c, name)
        if values is not None and len(values) != want:
            layout = "SD 1.x/2.x (IN0-11, MID, OUT0-11)" if want == 25 else "SDXL (emb, IN0-8, MID0-2, OUT0-8, out)"
            return f"network.{name} has {len(values)} values but the model is {family}: {layout} takes {want}"
    return None
