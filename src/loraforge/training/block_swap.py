"""`training.blocks_to_swap`: train a denoiser larger than the GPU by keeping only some of its blocks' frozen weights
there (kohya's `--blocks_to_swap`; FLUX.1's 19 double and 38 single blocks hold 22 of its 23 GiB in bf16).

At most `len(blocks) - blocks_to_swap` blocks hold their frozen weights on the device at a time. When a block runs
and its weights are not there, the block that ran last gives up its place (it is done: the next block has started),
then the block's weights are copied in from CPU memory. The blocks run in cycles: a training step's forward pass in
order and its backward pass (which runs each checkpointed block again, `training.gradient_checkpointing`) in reverse,
sampling's forward passes in order, one per denoising step. Giving up the most recently run block keeps the others
for the next cycle: 2 × `blocks_to_swap` block copies a training step, `blocks_to_swap` a sampling step (evicting the
least recently run block would copy every block at each sampling step), host to device only (the frozen weights never
change, so nothing is copied back).

Only frozen tensors move: the adapter's trainable parameters (LoRA factors on the blocks' layers) stay on the device
with their gradients and optimizer state. A weight that is out keeps its tensor (shape, dtype, device), but its
memory is freed (storage resized to 0, as FSDP does), so a weight used while it is out raises an error instead of
reading stale memory. Quantized weights (torchao's int8 / float8 tensor subclasses) move by their inner tensors.

Why our own: diffusers' group offloading and accelerate's `cpu_offload` are built for inference: they take a block's
weights off the device right after its forward, which the backward pass then needs; and their hooks leave on the
device what training must keep there (the LoRA factors). The copies use the compute stream (correct without
synchronisation; not overlapped with compute: `loraforge plan` counts their time).
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from ..errors import ConfigError

log = logging.getLogger(__name__)


def swappable_blocks(denoiser: torch.nn.Module, lists: tuple[str, ...]) -> list[torch.nn.Module]:
    """The denoiser's blocks in the order its forward runs them (`Family.swap_blocks`: the ModuleLists holding them)."""
    return [block for name in lists for block in getattr(denoiser, name)]


def check_blocks_to_swap(count: int, model, processes: int) -> None:
    """Refuse a `training.blocks_to_swap` the loaded model or the launch cannot honour."""
    if not count:
        return
    blocks = len(swappable_blocks(model.unet, model.family.swap_blocks))
    if count >= blocks:
        raise ConfigError(
            f"training.blocks_to_swap = {count}, but {model.family.label}'s transformer has {blocks} blocks and at "
            f"least one must stay on the device: set it to {blocks - 1} or less (each block swapped saves its weights' "
            "memory and costs two copies a step)"
        )
    if processes > 1:
        raise ConfigError("training.blocks_to_swap trains on one GPU: several processes would each keep their own "
                          "CPU copy of the blocks; set it to 0, or train with one process")


def _data_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors that hold `t`'s data: `t` itself, or a tensor subclass's inner tensors (torchao's quantized
    weights: the int8 data, the scales)."""
    if is_traceable_wrapper_subclass(t):
        names, _ = t.__tensor_flatten__()
        return [leaf for name in names for leaf in _data_tensors(getattr(t, name))]
    return [t]


def _pinned(t: torch.Tensor) -> torch.Tensor:
    """`t` in page-locked memory (CUDA copies it asynchronously), or as it is where the system refuses to pin more."""
    try:
        return t.pin_memory()
    except RuntimeError as e:
        log.warning("training.blocks_to_swap: could not pin %.1f MiB of CPU memory (%s); copies will be slower",
                    t.untyped_storage().nbytes() / 2**20, e)
        return t


class Residency:
    """Which blocks hold their weights on the device: at most `capacity`; the block that ran last gives up its place
    (the policy alone: `BlockSwap` moves the weights, `loraforge plan` counts the copies with it)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._blocks: OrderedDict[int, None] = OrderedDict()  # the block run last at the end

    def enter(self, i: int) -> tuple[bool, list[int]]:
        """Block `i` runs: (whether its weights must be copied in, the blocks that give up their places first)."""
        if i in self._blocks:
            self._blocks.move_to_end(i)
            return False, []
        out = []
        while len(self._blocks) >= self.capacity:
            out.append(self._blocks.popitem(last=True)[0])
        self._blocks[i] = None
        return True, out

    @property
    def blocks(self) -> list[int]:
        """The resident blocks, the block run last at the end."""
        return list(self._blocks)


class BlockSwap:
    """The blocks' frozen weights, `capacity` blocks' worth on `device` at a time (see the module docstring)."""

    def __init__(self, blocks: list[torch.nn.Module], blocks_to_swap: int, device):
        self.blocks = list(blocks)
        self.capacity = len(self.blocks) - blocks_to_swap
        self.device = torch.device(device)
        self._held: list[list[tuple[torch.Tensor, torch.Tensor, int]]] = []  # per block: (tensor, CPU copy, bytes)
        self._residency = Residency(self.capacity)
        self._hooks = []
        self.peak = 0  # the most blocks resident at once
        self.copies = 0  # blocks copied to the device so far

    def install(self) -> "BlockSwap":
        """Per block: trainable parameters and buffers onto the device for good; each frozen parameter gets a private
        tensor on the device, its CPU copy is kept (pinned for CUDA's asynchronous copies) and its memory freed.
        One block's weights are on the device at a time while this runs."""
        pin = self.device.type == "cuda"
        for i, block in enumerate(self.blocks):
            held = []
            for p in block.parameters():
                p.data = p.data.to(self.device, copy=True)  # private storage: freeing it frees nobody else's
                if p.requires_grad:
                    continue
                for t in _data_tensors(p.data):
                    copy = t.detach().to("cpu", copy=True)
                    held.append((t, _pinned(copy) if pin else copy, t.untyped_storage().nbytes()))
            for name, b in block.named_buffers():
                owner, _, leaf = name.rpartition(".")
                block.get_submodule(owner)._buffers[leaf] = b.to(self.device)
            self._held.append(held)
            self._release(i)
            self._hooks.append(block.register_forward_pre_hook(lambda *_, i=i: self.enter(i)))
        out = sum(n for held in self._held for _, _, n in held)
        log.info("training.blocks_to_swap = %d: %d of %d blocks on the device at a time; %.2f GiB of frozen block "
                 "weights kept in CPU memory", len(self.blocks) - self.capacity, self.capacity, len(self.blocks),
                 out / 2**30)
        return self

    def enter(self, i: int) -> None:
        """Block `i` is about to run: its weights onto the device, the last run block's off when full."""
        load, out = self._residency.enter(i)
        for j in out:
            self._release(j)
        if not load:
            return
        with torch.no_grad():
            for t, copy, nbytes in self._held[i]:
                t.untyped_storage().resize_(nbytes)
                t.copy_(copy, non_blocking=True)
        self.copies += 1
        self.peak = max(self.peak, len(self._residency.blocks))

    def _release(self, i: int) -> None:
        for t, _, _ in self._held[i]:
            t.untyped_storage().resize_(0)

    def resident(self) -> list[int]:
        """The blocks whose weights are on the device now, the block run last at the end."""
        return self._residency.blocks

    def remove(self) -> None:
        """Every block's weights back on the device and the hooks off (a model used whole afterwards)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self.capacity = self._residency.capacity = len(self.blocks)
        for i in range(len(self.blocks)):
            self.enter(i)


__all__ = ["BlockSwap", "Residency", "check_blocks_to_swap", "swappable_blocks"]
