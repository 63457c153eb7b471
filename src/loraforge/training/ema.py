"""An exponential moving average (EMA) of the trained weights: the network's and the new token embeddings
(`training.use_ema`, OneTrainer's and SimpleTuner's EMA).

After every `ema_update_interval`-th optimizer step each shadow tensor moves towards its weight:
shadow ← d·shadow + (1 − d)·weight, d = `ema_decay`, or with `ema_warmup` min(ema_decay, (1 + n)/(10 + n)) after n
updates (diffusers' and OneTrainer's warm-up: early updates follow the weights closely). The shadow is fp32, on the
training device or the CPU (`ema_device`). Its state (every shadow tensor and n) goes into each checkpoint, so a
resumed run continues it bit-exactly.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import RunFolderError
from ..utils.files import save_safetensors_atomic
from .outputs import write_lora_files
from .state import save_failed

EMA_STATE_FILE = "ema.safetensors"  # in a checkpoint folder


def ema_decay(decay: float, updates: int, warmup: bool) -> float:
    """The decay of update number `updates` (0-based)."""
    return min(decay, (1 + updates) / (10 + updates)) if warmup else decay


class EMA:
    def __init__(self, params: list[torch.nn.Parameter], decay: float, warmup: bool = True, every: int = 1,
                 device: torch.device | str | None = None):
        self.params = list(params)
        self.decay, self.warmup, self.every = decay, warmup, every
        self.device = device  # None: each weight's own device (the training device)
        self.shadow = [p.detach().float().clone().to(device or p.device) for p in self.params]
        self.updates = 0

    @classmethod
    def from_config(cls, training, params: list[torch.nn.Parameter]) -> "EMA | None":
        if not training.use_ema:
            return None
        device = "cpu" if training.ema_device == "cpu" else None
        return cls(params, training.ema_decay, training.ema_warmup, training.ema_update_interval, device)

    def step(self, global_step: int) -> bool:
        """After optimizer step `global_step` (1-based): update when it is an `every`-th step; True if it did."""
        if global_step % self.every:
            return False
        d = ema_decay(self.decay, self.updates, self.warmup)
        with torch.no_grad():
            for s, p in zip(self.shadow, self.params):
                s.mul_(d).add_(p.detach().to(s.device, torch.float32), alpha=1.0 - d)
        self.updates += 1
        return True

    @contextmanager
    def applied(self):
        """The EMA weights in place of the trained ones (to save or sample them), the trained ones back after."""
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s.to(p.device, p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for p, v in zip(self.params, saved):
                    p.copy_(v)

    # ------------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, torch.Tensor]:
        sd = {f"shadow.{i}": s.detach().cpu().contiguous() for i, s in enumerate(self.shadow)}
        sd["updates"] = torch.tensor(self.updates, dtype=torch.int64)
        return sd

    def load_state_dict(self, sd: dict[str, torch.Tensor], source: Path | str = "the checkpoint") -> None:
        keys = {f"shadow.{i}" for i in range(len(self.shadow))} | {"updates"}
        if set(sd) != keys or any(sd[f"shadow.{i}"].shape != s.shape for i, s in enumerate(self.shadow)):
            raise RunFolderError(f"{source}: its EMA state does not fit this run's trained weights (another network "
                                 "or number of new tokens); resume with the config of the run that wrote it")
        with torch.no_grad():
            for i, s in enumerate(self.shadow):
                s.copy_(sd[f"shadow.{i}"])
        self.updates = int(sd["updates"])


# ---------------------------------------------------------------------------------------------------- files
def save_ema_state(ema: EMA, folder: Path) -> None:
    save_safetensors_atomic(ema.state_dict(), folder / EMA_STATE_FILE)


def load_ema_state(ema: EMA, folder: Path) -> None:
    """Continue `ema` from checkpoint `folder` (bit-exactly)."""
    from safetensors.torch import load_file

    path = folder / EMA_STATE_FILE
    if not path.is_file():
        raise RunFolderError(f"training.resume: {folder} has no {EMA_STATE_FILE} (it was written without "
                             "training.use_ema), so the EMA cannot continue; resume with use_ema = false")
    ema.load_state_dict(load_file(str(path)), path)


def write_ema_files(cfg, ema: EMA, network, model, run_info: dict, run_dir: Path, pivotal=None) -> dict[str, Path]:
    """`<output_name>-ema.safetensors` (kohya layout; no diffusers file, whose name is fixed) and, with pivotal
    tuning, the EMA embeddings, beside the LoRA; returns {"ema": ..., "ema_embeddings": ...}."""
    cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"write_diffusers": False})})
    name = f"{cfg.output.output_name}-ema"
    try:
        with ema.applied():
            written = write_lora_files(cfg, network, model, run_info, run_dir, name, pivotal)
    except OSError as e:
        raise save_failed(e, "the EMA LoRA files", run_dir / name, run_dir) from e
    return {k: v for k, v in (("ema", written.kohya), ("ema_embeddings", written.embeddings)) if v}
