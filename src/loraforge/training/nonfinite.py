"""NaN and Inf during training (`training.on_nonfinite`): found at the step, before the optimizer applies it.

Every micro-batch's loss is tested; at each optimizer step (the last micro-batch of a gradient accumulation) the
gradients of the trained tensors are tested too, and the verdict is summed over all processes, so every process
stops or skips the same step. Under fp16 mixed precision accelerate's gradient scaler owns infinite gradients (it
skips those steps and lowers its scale, which is normal in the first steps), so only the loss is tested there.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import NonFiniteError
from .state import complete_checkpoints

log = logging.getLogger("loraforge.train")

FIXES = (
    "the usual causes: a learning rate too high (lower optimizer.learning_rate, e.g. 10× smaller); an fp16 VAE "
    "that overflows (set training.no_half_vae = true, or use an fp16-fixed VAE such as "
    "madebyollin/sdxl-vae-fp16-fix); fp16 mixed precision (training.mixed_precision = \"bf16\" on a GPU that has it)"
)


class NonFiniteGuard:
    """Call `check` after each backward pass; True means: skip this optimizer step."""

    def __init__(self, training_cfg, accelerator, run_dir: Path):
        self.mode, self.limit = training_cfg.on_nonfinite, training_cfg.nonfinite_skip_limit
        self.accelerator, self.run_dir = accelerator, run_dir
        self.check_grads = accelerator.scaler is None
        self.bad_loss = torch.zeros((), dtype=torch.bool, device=accelerator.device)  # since the last step
        self.in_a_row = 0
        self.skipped = 0

    def check(self, loss: torch.Tensor, params, step: int, lrs: dict[str, float]) -> bool:
        self.bad_loss |= ~torch.isfinite(loss.detach()).all()
        if not self.accelerator.sync_gradients:
            return False
        bad_grads = torch.zeros((), dtype=torch.bool, device=self.bad_loss.device)
        grads = [p.grad for p in params if p.grad is not None] if self.check_grads else []
        if grads:  # one fused norm (foreach kernels) instead of a test per tensor: NaN or Inf in any makes it so
            bad_grads = ~torch.isfinite(torch.nn.utils.get_total_norm(grads)).to(bad_grads.device)
        flags = self.accelerator.reduce(torch.stack([self.bad_loss, bad_grads]).float(), reduction="sum")
        self.bad_loss = torch.zeros_like(self.bad_loss)
        bad_loss, bad_grads = (bool(f > 0) for f in flags)
        if not (bad_loss or bad_grads):
            self.in_a_row = 0
            return False
        what = " and ".join(w for w, bad in (("the loss", bad_loss), ("the gradients", bad_grads)) if bad)
        rates = ", ".join(f"{name} {lr:.3g}" for name, lr in lrs.items())
        self.in_a_row += 1
        if self.mode == "stop" or self.in_a_row >= self.limit:
            raise NonFiniteError(self.message(step, what, rates))
        self.skipped += 1
        log.warning("step %d: %s became NaN/Inf (learning rate %s); optimizer step skipped (%d in a row; the run stops "
                    "at %d)", step, what, rates, self.in_a_row, self.limit)
        return True

    def message(self, step: int, what: str, rates: str) -> str:
        why = (f"training.on_nonfinite = \"skip\" skipped {self.in_a_row} steps in a row (nonfinite_skip_limit)"
               if self.mode == "skip" else "training.on_nonfinite = \"stop\"")
        found = complete_checkpoints(self.run_dir)
        kept = (f"the last complete checkpoint, {found[-1]}, is kept and resumable (training.resume = \"latest\")"
                if found else "no checkpoint was written before it (training.save_every_n_steps writes some)")
        return (
            f"step {step}: {what} became NaN or infinite at learning rate {rates}; training stopped ({why}). No final "
            f"LoRA file was written; {kept}. Check {FIXES}; a changed learning rate is a new run: start it again "
            "with output.overwrite = true or another output.output_name"
        )
