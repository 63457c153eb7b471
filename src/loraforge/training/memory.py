"""Warn while training on CUDA when memory runs out: the allocator's reserve within 5 % of the card, or the allocator
retrying (it freed its cache to satisfy a request: `num_alloc_retries`, each one a synchronising slow path). The
warning names the option to change first (docs/plan.md; `loraforge plan CONFIG --vram N` proposes a full set)."""

from __future__ import annotations

import logging

log = logging.getLogger("loraforge.train")

NEAR = 0.95  # warn when the allocator holds this share of the card


def memory_advice(cfg) -> str:
    """The option that saves the most memory for what it costs, given what is already set."""
    t, o = cfg.training, cfg.optimizer
    if not t.gradient_checkpointing:
        return "set training.gradient_checkpointing = true (activations are most of the memory; ~35 % slower)"
    if t.mixed_precision == "no":
        return "set training.mixed_precision = \"bf16\" (or \"fp16\"): the frozen weights and activations halve"
    if t.batch_size > 1:
        return (f"lower training.batch_size (now {t.batch_size}) and raise training.gradient_accumulation_steps to "
                "keep the images per step")
    if o.type in ("adamw", "prodigy"):
        return "set optimizer.type = \"adamw8bit\" (optimizer state 2 bytes a parameter instead of 8-16)"
    return f"lower network.rank (now {cfg.network.rank}) or dataset.resolution"


class MemoryWatch:
    """Called after every optimizer step (`check`); a no-op off CUDA. Warns once when the reserve first comes within
    5 % of the card, and when the allocator retries (again each time the count doubles)."""

    def __init__(self, cfg, device):
        self.cfg = cfg
        self.device = device
        self.cuda = getattr(device, "type", str(device)) == "cuda"
        self.warned_near = False
        self.retries_warned = 0

    def check(self, stats: dict | None = None, total_bytes: int | None = None, step: int | None = None) -> list[str]:
        """The warnings of this step (also logged). `stats` / `total_bytes` default to torch's for the device
        (`torch.cuda.memory_stats`, the card's total memory); tests pass their own."""
        if stats is None:
            if not self.cuda:
                return []
            import torch

            stats = torch.cuda.memory_stats(self.device)
            total_bytes = torch.cuda.get_device_properties(self.device).total_memory
        at = f"step {step}: " if step is not None else ""
        out = []
        reserved = stats.get("reserved_bytes.all.peak", stats.get("reserved_bytes.all.current", 0))
        if total_bytes and not self.warned_near and reserved >= NEAR * total_bytes:
            self.warned_near = True
            out.append(f"{at}GPU memory {reserved / 2**30:.1f} of {total_bytes / 2**30:.1f} GiB reserved (within 5 % "
                       f"of the card): the next larger batch or bucket may fail or spill; {memory_advice(self.cfg)}")
        retries = stats.get("num_alloc_retries", 0)
        if retries and retries >= max(1, 2 * self.retries_warned):
            self.retries_warned = retries
            out.append(f"{at}the CUDA allocator had to free its cache and retry {retries} time(s): memory is full and "
                       f"steps slow down; {memory_advice(self.cfg)}")
        for line in out:
            log.warning("%s", line)
        return out
