"""`loraforge plan`: peak memory and step time of a run, estimated before it runs, and settings that fit a card.

What it knows comes from the run plan (`plan_run`: family, tiny or not, resolution) and from the model's own
architecture built on PyTorch's `meta` device (no weights are read, nothing is allocated): the parameter counts of
the UNet, the text encoders and the VAE; the adapter's size from the very targets training would adapt
(`networks.targets.plan_targets`); the activations autograd saves for the backward pass, counted by running the
UNet forward on meta tensors under `saved_tensors_hooks`; the FLOPs of a step from `FlopCounterMode`. Where each
figure and constant comes from, and how the estimate compares with measured runs, is in `docs/plan.md`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from ..config import TrainConfig
from ..models.configs import config_folder
from ..models.loading import T5_LENGTHS
from ..models.tiny import tiny_model_dir
from ..networks.targets import plan_targets
from .block_swap import Residency, swappable_blocks
from .plan import RunPlan
from .release import releasable

GIB = 2**30
# CUDA context, cuBLAS/cuDNN workspaces and allocator slack not counted elsewhere (docs/plan.md: 0.9–1.3 GiB measured
# by PyTorch users for the context alone; the allocator's reserve-vs-allocated gap is of the same order)
CUDA_OVERHEAD_GIB = 1.0
# the resident set of a CPU process that has imported torch, diffusers and transformers (docs/plan.md: measured here)
CPU_BASE_GIB = 0.55
# optimizer state bytes per trainable parameter (fp32 states; bitsandbytes' 8-bit Adam keeps 2 one-byte states)
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw8bit": 2, "prodigy": 16, "adafactor": 4, "sgd": 4}
# a step's FLOPs relative to the UNet forward (docs/plan.md, peers.md §4: backward of a LoRA step (dX only) ≈ 1.1 ×
# forward; gradient checkpointing recomputes the forward: ≈ 1.48 × the step)
STEP_OVER_FORWARD = 2.1
CHECKPOINTING_COST = 1.48
# effective throughput of a GPU running loraforge-like eager code, TFLOP/s, by denoiser: a UNet, kohya sd-scripts
# SDXL LoRA 1024 bs1 at 1.08 it/s on an RTX 4090 (kohya_ss #1288) × 14.35 TFLOP/step (peers.md §4) ≈ 15.5; FLUX's
# transformer (large matmuls), SimpleTuner's FLUX LoRA bs1 at 1024 on a 4090, 3.5 s/step (quickstart/FLUX.md,
# peers.md) × our count of that step with gradient checkpointing, 241 TFLOP ≈ 69
GPU_TFLOPS = {"unet": 15.5, "transformer": 69.0}
DEFAULT_GPU_TFLOPS = GPU_TFLOPS["unet"]
# backward operators per forward operator: peers.md §4 counted 5.4k forward + 6.9k backward aten ops for an SDXL
# LoRA step (TorchDispatchMode on meta)
BACKWARD_OPS = 1.3
# the eager per-operator cost (Python + dispatcher + launch) on a GPU: peers.md §4, 5–10 µs; the middle
GPU_SECONDS_PER_OP = 7.5e-6
# the CPU's per-operator cost and throughput, fitted to two measured tiny SD 1.5 runs (batch 1 and 4) on this
# project's 2-core machine, one thread (docs/plan.md, scripts/plan_vs_measured.py)
CPU_SECONDS_PER_OP = 97e-6
DEFAULT_CPU_GFLOPS = 2.8
FITS_MARGIN = 0.95  # "fits" leaves 5 % of the card free (the trainer warns within 5 % too)
# host-to-device copies of `training.blocks_to_swap`, GB/s: pinned memory over PCIe 4.0 x16 (32 GB/s on paper; CUDA's
# bandwidthTest gives about 25 on such desktops, an RTX 4090's bus); the copies are not overlapped with compute
PCIE_GBPS = 25.0


@dataclass
class Estimate:
    """One configuration's estimate; memory in GiB, time in seconds."""

    settings: dict[str, object]  # the options that decided it, by their config names
    weights_gib: float
    network_params: int
    trainable_gib: float  # adapter weights, gradients, optimizer state
    activations_gib: float
    overhead_gib: float
    step_tflops: float
    step_ops: int  # aten operators a step dispatches (forward, backward, recomputation, VAE / text encoders)
    step_s: float
    device: str  # "cuda" or "cpu"
    # the weights on the device while the caches fill, before the denoiser arrives: the text encoders and the VAE
    # (`training.release` drops them afterwards when nothing needs them)
    loading_gib: float = 0.0
    swapped_gib: float = 0.0  # `training.blocks_to_swap`: block weights kept in CPU memory, not on the device

    @property
    def training_gib(self) -> float:
        """The training phase's peak (the loading phase's may be higher: `peak_gib`)."""
        return self.weights_gib + self.trainable_gib + self.activations_gib + self.overhead_gib

    @property
    def peak_gib(self) -> float:
        return max(self.training_gib, self.loading_gib + self.overhead_gib)

    def as_dict(self) -> dict:
        return {"settings": self.settings, "peak_gib": round(self.peak_gib, 3),
                "weights_gib": round(self.weights_gib, 3), "network_params": self.network_params,
                "trainable_gib": round(self.trainable_gib, 3), "activations_gib": round(self.activations_gib, 3),
                "overhead_gib": round(self.overhead_gib, 3), "loading_gib": round(self.loading_gib, 3),
                "swapped_gib": round(self.swapped_gib, 3),
                "step_tflops": round(self.step_tflops, 4),
                "step_ops": self.step_ops,
                "step_s": round(self.step_s, 4), "it_s": round(1 / self.step_s, 3) if self.step_s else None,
                "device": self.device}


@dataclass
class Proposal:
    vram_gib: float
    base: Estimate
    steps: list[tuple[str, Estimate]] = field(default_factory=list)  # (the change, the estimate after it)

    @property
    def fits(self) -> bool:
        last = self.steps[-1][1] if self.steps else self.base
        return last.peak_gib <= self.vram_gib * FITS_MARGIN


def model_folder(cfg: TrainConfig, plan: RunPlan) -> Path:
    """The diffusers folder whose configs describe the model: the tiny model's, the user's folder, else the
    family's full-size configs (a single file or a hub id of that family)."""
    if plan.is_tiny:
        return tiny_model_dir(plan.family.name)
    name = cfg.model.pretrained_model_name_or_path
    if name and (Path(name).expanduser() / "model_index.json").is_file():
        return Path(name).expanduser()
    return config_folder(plan.family.name)


def meta_model(folder: Path, fam) -> SimpleNamespace:
    """The denoiser (a UNet, or FLUX's transformer), text encoders and VAE of `folder` on the meta device (shapes
    only), as `plan_targets` takes them."""
    import torch
    import transformers
    from diffusers import AutoencoderKL, FluxTransformer2DModel, UNet2DConditionModel  # lazy: diffusers is heavy

    def config(sub):
        data = json.loads((folder / sub / "config.json").read_text(encoding="utf-8"))
        return {k: v for k, v in data.items() if not k.startswith("_")}

    with torch.device("meta"):
        if fam.is_flow:
            unet = FluxTransformer2DModel.from_config(config(fam.denoiser))
        else:
            unet = UNet2DConditionModel.from_config(config("unet"))
        vae = AutoencoderKL.from_config(config("vae"))
        tes = []
        for te in fam.text_encoders:
            te_config = transformers.AutoConfig.from_pretrained(folder / te.diffusers)
            cls = getattr(transformers, (te_config.architectures or ["CLIPTextModel"])[0])
            tes.append(cls(te_config))
    for m in (unet, vae, *tes):
        m.requires_grad_(False)
    return SimpleNamespace(family=fam, unet=unet, vae=vae, text_encoders=tes)


def adapter_params(model, cfg: TrainConfig) -> int:
    """Trainable parameters of the adapter, from the targets training would adapt: rank × (in + out) per linear or
    1×1 layer, rank × (in·k·k + out) per k×k convolution (LoRA / LoCon; LoHa and LoKr are counted the same)."""
    import torch

    total = 0
    for t in plan_targets(model, cfg.network):
        m = t.module
        if t.kind == "norm":
            total += sum(p.numel() for p in m.parameters())
        elif isinstance(m, torch.nn.Linear):
            total += t.rank * (m.in_features + m.out_features)
        else:
            k = m.kernel_size[0] * m.kernel_size[1] if t.kind == "conv" else 1
            total += t.rank * (m.in_channels * k + m.out_channels)
    return total


def text_length(model, cfg: TrainConfig) -> int:
    """Tokens of the text sequence the denoiser attends to: CLIP's 77, FLUX's T5 length (`model.max_sequence_length`,
    unset: [dev]'s 512, [schnell]'s 256)."""
    if not model.family.is_flow:
        return 77
    variant = "dev" if getattr(model.unet.config, "guidance_embeds", False) else "schnell"
    return cfg.model.max_sequence_length or T5_LENGTHS[variant]


def _denoiser_inputs(model, cfg: TrainConfig, batch: int, resolution, dtype, latent_factor: int):
    """(args, kwargs) of one training forward of the denoiser on meta tensors."""
    import torch

    if not model.family.is_flow:
        x, t, ctx, kw = _unet_inputs(model.unet, batch, resolution, dtype, latent_factor)
        return (x, t, ctx), kw
    c = model.unet.config
    tokens = (resolution[1] // latent_factor // 2) * (resolution[0] // latent_factor // 2)  # latents packed 2×2
    seq = text_length(model, cfg)
    meta = dict(device="meta", dtype=dtype)
    kw = dict(hidden_states=torch.zeros(batch, tokens, c.in_channels, **meta),
              encoder_hidden_states=torch.zeros(batch, seq, c.joint_attention_dim, **meta),
              pooled_projections=torch.zeros(batch, c.pooled_projection_dim, **meta),
              timestep=torch.zeros(batch, **meta), img_ids=torch.zeros(tokens, 3, **meta),
              txt_ids=torch.zeros(seq, 3, **meta), return_dict=False)
    if c.guidance_embeds:
        kw["guidance"] = torch.zeros(batch, **meta)
    return (), kw


def _unet_inputs(unet, batch: int, resolution: tuple[int, int], dtype, latent_factor: int):
    import torch

    c = unet.config
    lat_h, lat_w = resolution[1] // latent_factor, resolution[0] // latent_factor
    x = torch.zeros(batch, c.in_channels, lat_h, lat_w, device="meta", dtype=dtype)
    ctx = torch.zeros(batch, 77, c.cross_attention_dim, device="meta", dtype=dtype)
    kw = {}
    if c.addition_embed_type == "text_time":
        time_dim = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
        kw["added_cond_kwargs"] = {"text_embeds": torch.zeros(batch, time_dim, device="meta", dtype=dtype),
                                   "time_ids": torch.zeros(batch, 6, device="meta", dtype=dtype)}
    return x, torch.full((batch,), 500, device="meta"), ctx, kw


def _op_counter():
    """A dispatch mode that counts the aten operators run under it (`.n`): the per-operator launch / dispatch cost
    is what bounds small models and small batches, not FLOPs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class OpCount(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    return OpCount()


# the units diffusers checkpoints one by one: each ResNet and transformer of a UNet's blocks, each FLUX block
_CHECKPOINTED = re.compile(r"(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.(resnets|attentions)\.\d+"
                           r"|(single_)?transformer_blocks\.\d+")


def unet_activations(model, cfg: TrainConfig, resolution, batch: int, dtype,
                     latent_factor: int) -> tuple[float, float, int]:
    """(bytes autograd keeps for the backward pass at its peak, forward FLOPs, forward operators) of one UNet forward with the adapter's
    targets trainable. Attention score matrices (L × L) are left out: SDPA's flash / memory-efficient kernels keep
    only a log-sum-exp row (training.attention = "eager" keeps them: counted then). With gradient checkpointing the
    ResNets and transformers of the blocks keep their inputs only; the backward pass then recomputes one at a time,
    so the largest one's activations are added."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    targets = {t.path for t in plan_targets(model, cfg.network) if t.part == "unet"}
    gc = cfg.training.gradient_checkpointing
    eager = cfg.training.attention == "eager"
    # the same forward gives the same figures: `propose` changes mostly what this does not depend on
    key = (tuple(resolution), batch, dtype, bool(gc), eager, frozenset(targets), text_length(model, cfg))
    cache = vars(model).setdefault("activations_cache", {})
    if key in cache:
        return cache[key]
    unet = model.unet.to(dtype)
    for name, m in unet.named_modules():
        if name in targets:
            for p in m.parameters(recurse=False):
                p.requires_grad_(True)
    params = {id(p) for p in unet.parameters()}
    saved: dict[int, int] = {}
    per_block: dict[str, int] = {}
    current = ["other"]

    def pack(t):
        if id(t) in params or id(t) in saved:
            return t
        if not eager and t.dim() >= 3 and t.shape[-1] == t.shape[-2] and t.shape[-1] >= 16:
            return t  # an attention score matrix: not kept by SDPA's fused kernels
        saved[id(t)] = t.numel() * t.element_size()
        per_block[current[0]] = per_block.get(current[0], 0) + saved[id(t)]
        return t

    units = [n for n, _ in unet.named_modules() if _CHECKPOINTED.fullmatch(n)]
    hooks = [unet.get_submodule(u).register_forward_pre_hook(lambda *_, u=u: current.__setitem__(0, u))
             for u in units]
    args, kw = _denoiser_inputs(model, cfg, batch, resolution, dtype, latent_factor)
    try:
        if gc:  # the blocks' own activations, measured without checkpointing, give the recomputation's peak
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda v: v):
                unet(*args, **kw)
            largest = max((v for k, v in per_block.items() if k != "other"), default=0)
            saved.clear()
            per_block.clear()
            unet.enable_gradient_checkpointing()
            unet.train()
        ops = _op_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda v: v), FlopCounterMode(display=False) as flops:
            with ops:
                unet(*args, **kw)
    finally:  # the meta model as it was, for the next estimate
        for h in hooks:
            h.remove()
        unet.requires_grad_(False)
        if gc:
            unet.disable_gradient_checkpointing()
    kept = sum(saved.values()) + (largest if gc else 0)
    cache[key] = kept, flops.get_total_flops(), ops.n
    return cache[key]


def _frozen_forward(module, dtype, *inputs) -> tuple[float, int]:
    """(FLOPs, operators) of a frozen module's forward on meta inputs (the VAE encoder, a text encoder)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    ops = _op_counter()
    with FlopCounterMode(display=False) as flops, torch.no_grad(), ops:
        module.to(dtype)(*inputs)
    return flops.get_total_flops(), ops.n


def _bytes(dtype) -> int:
    import torch

    return torch.tensor([], dtype=dtype).element_size()


def estimate(cfg: TrainConfig, plan: RunPlan, *, cuda: bool, tflops: float | None = None, model=None) -> Estimate:
    """The estimate of the run `cfg` describes (with `plan` from `plan_run`), on a CUDA card or on the CPU."""
    import torch

    fam = plan.family
    model = model or meta_model(model_folder(cfg, plan), fam)
    t, o, d = cfg.training, cfg.optimizer, cfg.dataset
    mp = t.mixed_precision
    if mp == "auto":
        mp = "bf16" if cuda else "no"
    dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mp]
    vae_dtype = torch.float32 if mp == "fp16" or t.no_half_vae else dtype
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    stored = _stored_bytes(model.unet, dtype, cfg.model.quantize_base)
    swap = block_swap_bytes(model, t.blocks_to_swap, dtype, cfg.model.quantize_base)
    stored -= swap.off_device
    text = sum(count(te) for te in model.text_encoders) * _bytes(dtype)
    vae = count(model.vae) * _bytes(vae_dtype)
    released = releasable(cfg)
    weights = stored + (0 if "text_encoders" in released else text) + (0 if "vae" in released else vae)
    loading = text + vae  # the caches fill before the denoiser reaches the device (`Trainer.prepare`)
    n_adapter = adapter_params(model, cfg)
    state = OPTIMIZER_STATE_BYTES.get(o.type, 8)
    trainable = n_adapter * (4 + 4 + state)
    latent_factor = 2 ** (len(model.vae.config.block_out_channels) - 1)
    acts, unet_flops, unet_ops = unet_activations(model, cfg, plan.resolution, t.batch_size, dtype, latent_factor)
    gc = t.gradient_checkpointing
    step_flops = unet_flops * STEP_OVER_FORWARD * (CHECKPOINTING_COST if gc else 1)
    step_ops = unet_ops * (1 + BACKWARD_OPS + (1 if gc else 0))
    if not (d.cache_latents or d.cache_latents_to_disk):
        pixels = torch.zeros(t.batch_size, model.vae.config.in_channels, plan.resolution[1], plan.resolution[0],
                             device="meta", dtype=vae_dtype)
        f, n = _frozen_forward(model.vae.encoder, vae_dtype, pixels)
        step_flops, step_ops = step_flops + f, step_ops + n
    if not (d.cache_text_encoder_outputs or d.cache_text_encoder_outputs_to_disk):
        for i, te in enumerate(model.text_encoders):  # FLUX: CLIP-L reads 77 tokens, T5 the T5 length
            length = text_length(model, cfg) if fam.is_flow and i else 77
            ids = torch.zeros(t.batch_size, length, dtype=torch.long, device="meta")
            f, n = _frozen_forward(te, dtype, ids)
            step_flops, step_ops = step_flops + f, step_ops + n
    step_flops *= t.gradient_accumulation_steps
    step_ops *= t.gradient_accumulation_steps
    if cuda:  # kernels run while Python queues the next ones: the slower of the two sets the pace; then the copies
        step_s = max(step_flops / ((tflops or GPU_TFLOPS[fam.denoiser]) * 1e12), step_ops * GPU_SECONDS_PER_OP)
        step_s += swap.copied * t.gradient_accumulation_steps / (PCIE_GBPS * 1e9)
    else:  # one after the other
        step_s = step_ops * CPU_SECONDS_PER_OP + step_flops / ((tflops or DEFAULT_CPU_GFLOPS / 1000) * 1e12)
    settings = {"training.batch_size": t.batch_size, "training.gradient_checkpointing": t.gradient_checkpointing,
                "training.mixed_precision": mp, "optimizer.type": o.type, "network.rank": cfg.network.rank,
                "dataset.cache_latents": d.cache_latents or d.cache_latents_to_disk,
                "resolution": f"{plan.resolution[0]}x{plan.resolution[1]}"}
    if cfg.model.quantize_base != "none":
        settings["model.quantize_base"] = cfg.model.quantize_base
    if t.blocks_to_swap:
        settings["training.blocks_to_swap"] = t.blocks_to_swap
    if released:
        settings["released after caching"] = " and ".join(released)
    return Estimate(settings=settings, weights_gib=weights / GIB, network_params=n_adapter, loading_gib=loading / GIB,
                    trainable_gib=trainable / GIB, activations_gib=acts / GIB,
                    overhead_gib=CUDA_OVERHEAD_GIB if cuda else CPU_BASE_GIB, step_tflops=step_flops / 1e12,
                    step_ops=round(step_ops), step_s=step_s, device="cuda" if cuda else "cpu",
                    swapped_gib=swap.off_device / GIB)


def _stored_bytes(module, dtype, quantize_base: str) -> int:
    """Bytes of `module`'s weights on the device: the compute dtype, torchao's quantized linear weights one byte."""
    import torch

    total = sum(p.numel() for p in module.parameters()) * _bytes(dtype)
    if quantize_base != "none":
        linear = sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))
        total -= linear * (_bytes(dtype) - 1)
    return total


@dataclass
class SwapBytes:
    off_device: int = 0  # frozen block weights not on the device at the peak
    copied: int = 0  # bytes copied to the device a step


def block_swap_bytes(model, blocks_to_swap: int, dtype, quantize_base: str) -> SwapBytes:
    """What `training.blocks_to_swap` keeps off the device at its peak and copies a training step, by the trainer's
    own policy (`block_swap.Residency`) over a step's cycle: the forward runs the blocks in order, the backward in
    reverse (the second step: the first starts from an empty device)."""
    blocks = swappable_blocks(model.unet, model.family.swap_blocks) if blocks_to_swap else []
    if not blocks_to_swap or blocks_to_swap >= len(blocks):
        return SwapBytes()
    sizes = [_stored_bytes(b, dtype, quantize_base) for b in blocks]
    residency, peak, copied = Residency(len(blocks) - blocks_to_swap), 0, 0
    for _ in range(2):
        copied = 0
        for i in [*range(len(blocks)), *reversed(range(len(blocks)))]:
            load, _ = residency.enter(i)
            copied += sizes[i] if load else 0
            peak = max(peak, sum(sizes[j] for j in residency.blocks))
    return SwapBytes(off_device=sum(sizes) - peak, copied=copied)


def _with(cfg: TrainConfig, section: str, **values) -> TrainConfig:
    return cfg.model_copy(update={section: getattr(cfg, section).model_copy(update=values)})


def propose(cfg: TrainConfig, plan: RunPlan, vram_gib: float, *, tflops: float | None = None,
            model=None) -> Proposal:
    """The estimate as configured and, while it does not fit `vram_gib` (less 5 %), the next change of the usual
    order: gradient checkpointing, bf16, 8-bit AdamW, cached latents (time, not memory), an int8 base, cached text,
    block swap (FLUX), a smaller batch with gradient accumulation keeping the images per step, a lower rank. Each
    change is kept and the next is added."""
    model = model or meta_model(model_folder(cfg, plan), plan.family)
    base = estimate(cfg, plan, cuda=True, tflops=tflops, model=model)
    proposal = Proposal(vram_gib, base)
    limit = vram_gib * FITS_MARGIN
    changes = [
        ("training.gradient_checkpointing = true", lambda c: None if c.training.gradient_checkpointing
         else _with(c, "training", gradient_checkpointing=True)),
        ("training.mixed_precision = \"bf16\"", lambda c: None if c.training.mixed_precision in ("bf16", "fp16",
                                                                                                 "auto")
         else _with(c, "training", mixed_precision="bf16")),
        ("optimizer.type = \"adamw8bit\"", lambda c: None if c.optimizer.type in ("adamw8bit", "adafactor", "sgd")
         else _with(c, "optimizer", type="adamw8bit")),
        ("dataset.cache_latents = true", lambda c: None if c.dataset.cache_latents or c.dataset.cache_latents_to_disk
         else _with(c, "dataset", cache_latents=True)),
        # the frozen denoiser in one byte a weight (torchao; LoRA only)
        ("model.quantize_base = \"int8\"", lambda c: None if c.model.quantize_base != "none" or c.network.algo != "lora"
         else _with(c, "model", quantize_base="int8")),
        # text-encoder outputs cached and no samples: the text encoders (FLUX's T5: 9 GiB in bf16) and VAE leave
        ("dataset.cache_text_encoder_outputs = true, sampling.at_end = false",
         lambda c: None if c.network.train_text_encoder or c.training.train_text_encoder_ti or (
             c.dataset.cache_text_encoder_outputs and not c.sampling.at_end)
         else _with(_with(c, "dataset", cache_text_encoder_outputs=True), "sampling", at_end=False)),
    ]
    # the fewest blocks in CPU memory that bring the peak under the limit (FLUX; needs gradient checkpointing, on by
    # now): time, not quality, so before the batch and the rank
    changes.append(("training.blocks_to_swap", lambda c: _swap_to_fit(c, model, limit, last_training[0])))
    b = cfg.training.batch_size
    while b > 1:
        b //= 2
        changes.append((f"training.batch_size = {b}, gradient_accumulation_steps = "
                        f"{cfg.training.gradient_accumulation_steps * cfg.training.batch_size // b}",
                        lambda c, b=b: _with(c, "training", batch_size=b, gradient_accumulation_steps=
                                             cfg.training.gradient_accumulation_steps * cfg.training.batch_size // b)))
    r = cfg.network.rank
    while r > 4:
        r //= 2
        changes.append((f"network.rank = {r}", lambda c, r=r: _with(c, "network", rank=r)))
    current, last = cfg, base
    last_training = [base.training_gib]  # read by the block-swap change
    for text, change in changes:
        if last.peak_gib <= limit:
            break
        new = change(current)
        if new is None:
            continue
        current = new
        last = estimate(current, plan, cuda=True, tflops=tflops, model=model)
        last_training[0] = last.training_gib
        if text == "training.blocks_to_swap":
            text = f"training.blocks_to_swap = {current.training.blocks_to_swap}"
        proposal.steps.append((text, last))
    return proposal


def _swap_to_fit(cfg: TrainConfig, model, limit_gib: float, training_gib: float) -> TrainConfig | None:
    """`cfg` with the smallest `training.blocks_to_swap` whose saving brings the training phase's peak `training_gib`
    to `limit_gib` (or the most allowed, when none does; swapping cannot lower the loading phase); None where the
    family swaps no blocks, the option is set already or the training peak fits."""
    import torch

    t = cfg.training
    blocks = len(swappable_blocks(model.unet, model.family.swap_blocks)) if model.family.swap_blocks else 0
    if not blocks or t.blocks_to_swap or t.torch_compile or not t.gradient_checkpointing or training_gib <= limit_gib:
        return None
    dtype = {"fp16": torch.float16, "no": torch.float32}.get(t.mixed_precision, torch.bfloat16)
    over = (training_gib - limit_gib) * GIB
    n = next((n for n in range(1, blocks) if block_swap_bytes(model, n, dtype, cfg.model.quantize_base).off_device
              >= over), blocks - 1)
    return _with(cfg, "training", blocks_to_swap=n)


def table(rows: list[tuple[str, Estimate]], vram_gib: float | None = None) -> str:
    """A plain-text table: one row per estimate."""
    head = f"{'settings':<58} {'peak GiB':>8} {'weights':>8} {'adapter':>8} {'activ.':>8} {'s/step':>8}"
    lines = [head, "-" * len(head)]
    for text, e in rows:
        fits = "" if vram_gib is None else ("  fits" if e.peak_gib <= vram_gib * FITS_MARGIN else "  too big")
        lines.append(f"{text[:58]:<58} {e.peak_gib:8.2f} {e.weights_gib:8.2f} {e.trainable_gib:8.3f} "
                     f"{e.activations_gib:8.2f} {e.step_s:8.3g}{fits}")
    return "\n".join(lines)


__all__ = ["Estimate", "Proposal", "estimate", "propose", "table"]
