"""`[training]`: the loop."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .training_flow import FlowOptions
from .training_options import MAX_SEED

class TrainingConfig(FlowOptions):
    """The loop; the loss, noise, validation, EMA, masked-loss and text-encoder-schedule options are in
    `training_options.py` and the flow-matching (FLUX) options in `training_flow.py` (their fields come first in
    the section)."""

    max_train_steps: int | None = Field(
        None,
        ge=1,
        description=(
            "Optimizer steps to train. With `num_train_epochs` also set, training stops at whichever comes first. "
            "Both unset: 1000 steps."
        ),
    )
    num_train_epochs: int | None = Field(None, ge=1, description="Epochs (passes over images × repeats) to train.")
    batch_size: int = Field(1, ge=1, description="Images per step on each device.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Batches accumulated into one optimizer step."
    )
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = Field(
        "auto",
        description=(
            "Compute precision of the frozen model. `auto`: bf16 on a GPU that supports it, else fp16 on a GPU, "
            "`no` (fp32) on the CPU. LoRA weights and optimizer state stay fp32."
        ),
    )
    gradient_checkpointing: bool | Literal["selective"] = Field(
        False,
        description=(
            "Recompute activations in the backward pass: much less memory, about 20-30 % slower. `\"selective\"`: "
            "the same checkpointed blocks, but the outputs of matrix products, convolutions and attention are kept "
            "and only the cheap operations between them (norms, activations, additions) are recomputed: less "
            "recomputation than `true`, more memory. See docs/benchmarks.md."
        ),
    )
    blocks_to_swap: int = Field(
        0,
        ge=0,
        description=(
            "FLUX.1: keep the frozen weights of only (blocks − N) of the transformer's 57 blocks on the GPU at a time "
            "and copy each block in from CPU memory when it runs (kohya's `--blocks_to_swap`): each block swapped "
            "saves its weights' memory (a double block 0.63 GiB in bf16, a single block 0.26 GiB) and costs two "
            "copies a step over PCIe. Needs `gradient_checkpointing`; not with `torch_compile` or several GPUs. "
            "`loraforge plan --vram` proposes a value. 0: off."
        ),
    )
    channels_last: bool = Field(
        False,
        description=(
            "Keep the UNet's convolution weights and the noisy latents in channels-last memory layout (NHWC), which "
            "tensor-core convolutions prefer on a GPU. The same results (up to float rounding). See docs/benchmarks.md."
        ),
    )
    pin_memory: Literal["auto"] | bool = Field(
        "auto",
        description=(
            "Load batches into pinned (page-locked) host memory and copy them to the GPU asynchronously. `auto`: on "
            "when training on CUDA, off otherwise (pinning does nothing useful without a GPU)."
        ),
    )
    torch_compile: bool = Field(
        False,
        description=(
            "Compile each of the UNet's transformer blocks with `torch.compile` (regional compilation, not the whole "
            "UNet): the first steps, and the first step of each new bucket shape, are slower while they compile; "
            "needs a working compiler toolchain (Triton on a GPU, a C++ compiler on the CPU). See docs/benchmarks.md."
        ),
    )
    torch_compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = Field(
        "default",
        description=(
            "torch.compile's mode with `torch_compile = true`: `default`; `reduce-overhead` (CUDA graphs: one graph "
            "replayed per step, for static shapes only, so refused when the buckets give several image sizes); "
            "`max-autotune` (tries more kernels: a longer compile, sometimes faster steps). CUDA graphs and "
            "autotuning act on a GPU only."
        ),
    )
    attention: Literal["sdpa", "xformers", "eager"] = Field(
        "sdpa",
        description=(
            "UNet attention backend: `sdpa` (PyTorch's scaled-dot-product attention, diffusers' default, "
            "memory-efficient), `xformers` (kohya's `--xformers`; only where the xformers package is installed, CUDA "
            "only), `eager` (plain softmax(QKᵀ)V, kohya's default without --sdpa / --xformers; slower, more memory)."
        ),
    )
    seed: int = Field(
        42, ge=0, le=MAX_SEED, description="Seed for noise, timesteps, data order and LoRA initialisation (0 to 2³² − 1)."
    )
    save_every_n_steps: int | None = Field(
        None,
        ge=1,
        description=(
            "Write a checkpoint folder (LoRA files + optimizer, scheduler and step state) every N steps; "
            "`training.resume` continues from one."
        ),
    )
    resume: str | None = Field(
        None,
        description=(
            "Continue from a checkpoint folder, or `latest` for the newest one of this run. Refused when the config "
            "differs from the checkpoint's in anything but the length, the save and sampling options, `[output]`, "
            "the precision and the caches (each difference is listed)."
        ),
    )
    dataloader_num_workers: int = Field(0, ge=0, description="Worker processes that load images.")
    max_train_steps_per_image: int | None = Field(
        None,
        ge=1,
        description=(
            "When `max_train_steps` is unset: train this many steps per training image (the face recipe of the "
            "seed guides: 100-120). Class and regularisation images do not count; repeats do not either."
        ),
    )
    save_every_n_epochs: int | None = Field(None, ge=1, description="Also write a checkpoint folder every N epochs.")
    save_last_n_steps: int | None = Field(
        None, ge=1, description="Keep only the checkpoints of the last N steps (older ones are deleted)."
    )
    save_last_n_epochs: int | None = Field(
        None, ge=1, description="Keep only the checkpoints of the last N epochs (older ones are deleted)."
    )
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description=(
            "When the loss or the gradients become NaN or infinite: `stop` ends the run with an error that gives the "
            "step, the learning rate and the usual fixes (no final LoRA file is written; the checkpoints already "
            "written stay resumable). `skip` leaves out that optimizer step (it does not count as a step) and goes "
            "on, and stops after `nonfinite_skip_limit` skipped steps in a row."
        ),
    )
    nonfinite_skip_limit: int = Field(
        5, ge=1, description="With `on_nonfinite = \"skip\"`: stop after this many skipped steps in a row."
    )
    # ---- conditioning
    clip_skip: int | None = Field(
        None,
        ge=1,
        le=11,
        description=(
            "Condition on an earlier text-encoder layer: 1 = the penultimate layer for SD 1.x (A1111's 'clip skip 2'); "
            "for SDXL it counts from its usual penultimate layer. Used for training and sampling alike."
        ),
    )
    no_half_vae: bool = Field(
        False,
        description="Keep the VAE in fp32 under bf16 too (it is always fp32 under fp16, where SD VAEs overflow).",
    )
    # ---- pivotal tuning
    train_text_encoder_ti: bool = Field(
        False,
        description=(
            "Pivotal tuning: learn new tokens (`<s0><s1>...`, replacing `token_abstraction` in every prompt) by "
            "textual inversion in every text encoder, together with the LoRA. Only the new embedding rows train. "
            "With `network.algo = \"none\"`: textual inversion alone, the embeddings train for the whole run."
        ),
    )
    train_t5_ti: bool = Field(
        False,
        description=(
            "FLUX.1 pivotal tuning: give the new tokens to T5-XXL too, with their own trained embeddings (diffusers' "
            "advanced FLUX script's `--enable_t5_ti`); the embeddings file then holds `t5` vectors beside `clip_l`. "
            "Off: only CLIP-L learns them and T5 reads `<s0><s1>` as text, as that script does by default. Needs "
            "`train_text_encoder_ti`."
        ),
    )
    train_text_encoder_ti_frac: float = Field(
        0.5,
        gt=0,
        le=1,
        description=(
            "Fraction of the steps during which the new embeddings train together with the LoRA (then only the "
            "LoRA). Not with `ti_steps`."
        ),
    )
    ti_steps: int | None = Field(
        None,
        ge=1,
        description=(
            "Phased pivotal tuning (cloneofsimo's lora_pti): the first N steps train only the new embeddings (at "
            "`optimizer.embedding_lr`), then they freeze and the LoRA trains alone for the remaining steps (the UNet "
            "and, with `network.train_text_encoder`, the text encoders' LoRA). N counts in `max_train_steps`; one "
            "learning-rate schedule spans both phases. Unset: the embeddings and the LoRA train together for "
            "`train_text_encoder_ti_frac` of the steps."
        ),
    )
    token_names: list[str] | None = Field(
        None,
        description=(
            "Names of the new tokens instead of the generated `<s0><s1>...`, e.g. `[\"<krk>\", \"<s1>\"]`: "
            "`num_new_tokens_per_abstraction` per abstraction in order (unset: the list's length divided by the "
            "number of abstractions). Each must be new to the tokenizers (a word or token they know is refused); "
            "no spaces or commas."
        ),
    )
    token_abstraction: str = Field(
        "TOK", min_length=1, description="Placeholder in prompts and captions replaced by the new tokens."
    )
    num_new_tokens_per_abstraction: int = Field(
        2, ge=1, le=16, description="New tokens per abstraction (with `token_names` unset: their number decides)."
    )
    initializer_token: str | None = Field(
        None,
        description=(
            "Initialise the new embeddings from this word's embedding (mean of its tokens). Unset: random with the "
            "embedding table's standard deviation."
        ),
    )

    @property
    def token_abstractions(self) -> list[str]:
        """The placeholders `token_abstraction` lists (comma-separated)."""
        return [a.strip() for a in self.token_abstraction.split(",") if a.strip()]

    @property
    def tokens_per_abstraction(self) -> int:
        if self.token_names and "num_new_tokens_per_abstraction" not in self.model_fields_set:
            return len(self.token_names) // max(1, len(self.token_abstractions))
        return self.num_new_tokens_per_abstraction

    @model_validator(mode="after")
    def _check_compile_mode(self) -> "TrainingConfig":
        if self.torch_compile_mode != "default" and not self.torch_compile:
            raise ValueError(f"training.torch_compile_mode = {self.torch_compile_mode!r} needs training.torch_compile "
                             "= true (nothing is compiled without it): turn it on, or remove torch_compile_mode")
        return self

    @model_validator(mode="after")
    def _check_blocks_to_swap(self) -> "TrainingConfig":
        if not self.blocks_to_swap:
            return self
        if not self.gradient_checkpointing:
            raise ValueError(f"training.blocks_to_swap = {self.blocks_to_swap} needs training.gradient_checkpointing: "
                             "the backward pass runs each block again, which brings its weights back to the device "
                             "(without checkpointing it would need every block's weights kept). Set "
                             "training.gradient_checkpointing = true, or training.blocks_to_swap = 0")
        if self.torch_compile:
            raise ValueError("training.blocks_to_swap copies weights in hooks around each block, which "
                             "training.torch_compile's compiled blocks do not run through: use one of the two")
        return self

    @model_validator(mode="after")
    def _check_token_names(self) -> "TrainingConfig":
        names = self.token_names
        if names is None:
            return self
        bad = [n for n in names if not n or any(c.isspace() or c == "," for c in n)]
        if bad:
            raise ValueError(f"training.token_names: {bad} — a token name must be one word without spaces or commas "
                             "(e.g. '<krk>')")
        if len(set(names)) != len(names):
            raise ValueError(f"training.token_names {names} names a token twice; give each token its own name")
        hidden = [n for n in names for a in self.token_abstractions if a in n]
        if hidden:
            raise ValueError(f"training.token_names {hidden} contain the token abstraction "
                             f"{self.token_abstraction!r}, which would be replaced inside them; pick other names")
        want = self.tokens_per_abstraction * len(self.token_abstractions)
        if len(names) != want:
            raise ValueError(
                f"training.token_names has {len(names)} names but {len(self.token_abstractions)} abstraction(s) × "
                f"training.num_new_tokens_per_abstraction {self.tokens_per_abstraction} need {want}: give {want} "
                "names, or leave num_new_tokens_per_abstraction unset (the names then decide)"
            )
        return self
