"""`loraforge bench`: timed LoRA training steps of the real trainer over a grid of settings.

Each grid point builds a `Trainer` (the one `loraforge train` runs) on a synthetic dataset of noise images with
cached latents and text-encoder outputs, runs `warmup + steps` steps of its loop, and reads the time between the
loop's calls of the step's loss: data loading, forward, backward, clipping, optimizer and the loop's own work are
all inside. The model is the embedded tiny one of the family ("tiny"), or the family's real architecture (its
configs from `models.configs`) with random weights ("full"), or that architecture at 0.4 of its UNet's width
("mid": SD 1.5's UNet at about 140 M parameters) — nothing is downloaded.

Per point: images per second, step time (median, min, max), peak memory (CUDA allocated and reserved; on the CPU
the process's peak resident memory, reset per point, and again after the model is built and the caches filled, for
the steps alone), the FLOPs of one step (torch's `FlopCounterMode`: the
operations executed, so gradient checkpointing's recomputation counts) and the MFU against `peak_tflops` (the
device's dense peak: a built-in table for known GPUs, else given; none on the CPU unless given).

With `baseline`, each point also times a plain PyTorch loop on the same UNet with the same adapter and optimizer
(cached latents and embeddings as tensors, `randn_like` noise, MSE, backward, step): what the trainer's machinery
costs on top of the math.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import itertools
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import load_config
from ..errors import ToolError
from ..families import family as family_info
from ..models.configs import config_folder
from ..models.loading import SDModel
from ..models.text import sdxl_time_ids
from ..training.compile import compile_unet
from ..training.optim import build_optimizer
from ..training.plan import run_resolution
from ..training.trainer import Trainer

log = logging.getLogger(__name__)

# dense bf16/fp16 tensor-core peaks in TFLOP/s (vendor data sheets, SXM parts); matched against the device name
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.0, "3090": 71.0}
AXES = ("family", "resolution", "batch", "rank", "checkpointing", "compile", "optimizer", "algo", "quantize",
        "channels_last")


@dataclass(frozen=True)
class Case:
    """One grid point."""

    family: str = "sd15"
    resolution: int = 64
    batch: int = 1
    rank: int = 4
    checkpointing: bool | str = False  # training.gradient_checkpointing: False, True, "selective"
    compile: bool | str = False  # False, True (mode "default"), or a training.torch_compile_mode
    optimizer: str = "adamw"
    algo: str = "lora"
    quantize: str = "none"  # model.quantize_base
    channels_last: bool = False


def grid(**axes) -> list[Case]:
    """Every combination of the axes' values (each a list; a missing axis keeps the `Case` default)."""
    unknown = set(axes) - set(AXES)
    if unknown:
        raise ToolError(f"bench: unknown grid axis {sorted(unknown)}; the axes are {', '.join(AXES)}")
    values = [axes.get(name) or [getattr(Case(), name)] for name in AXES]
    return [Case(**dict(zip(AXES, combo))) for combo in itertools.product(*values)]


# ----------------------------------------------------------------------------------------------- the model
MID_WIDTH = 0.4  # "mid": the UNet's channels × 0.4 (SD 1.5: 320/640/1280 → 128/256/512), 64-wide heads
SIZES = ("tiny", "mid", "full")


def mid_unet_config(config: dict) -> dict:
    """A family's UNet config at `MID_WIDTH` of its widths (multiples of 64, heads of 64 channels); depths,
    attention layout and conditioning as the real model's."""
    channels = [max(64, round(c * MID_WIDTH / 64) * 64) for c in config["block_out_channels"]]
    return {**config, "block_out_channels": channels, "attention_head_dim": [c // 64 for c in channels]}


def random_model(family_name: str, device, size: str = "full") -> SDModel:
    """The family's real architecture (`size` "full"), or its UNet at `MID_WIDTH` of the width ("mid"), with random
    weights (built on `device`), from its config folder."""
    fam = family_info(family_name)
    folder = config_folder(family_name)
    index = json.loads((folder / "model_index.json").read_text())
    parts = {}
    for name, spec in index.items():
        if not isinstance(spec, list) or spec[0] is None:
            continue
        cls = getattr(importlib.import_module(spec[0]), spec[1])
        if not issubclass(cls, torch.nn.Module):  # tokenizers, the scheduler
            load = cls.from_pretrained if "Tokenizer" in spec[1] else lambda f: cls.from_config(cls.load_config(f))
            parts[name] = load(str(folder / name))
            continue
        with torch.device(device):  # the weights are made there (fast on a GPU; no memory on "meta")
            if spec[0] == "transformers":
                from transformers import AutoConfig

                parts[name] = cls(AutoConfig.from_pretrained(str(folder / name)))
            else:
                config = cls.load_config(str(folder / name))
                parts[name] = cls.from_config(mid_unet_config(config) if name == "unet" and size == "mid" else config)
    te = [parts[p.diffusers] for p in fam.text_encoders]
    tok = [parts[p.tokenizer] for p in fam.text_encoders]
    scheduler = parts["scheduler"]
    prediction = scheduler.config.get("prediction_type", "epsilon")
    return SDModel(fam, f"random {size}-size {fam.label} ({folder})", parts["unet"], parts["vae"], te, tok, scheduler,
                   prediction, False)


class BenchTrainer(Trainer):
    """The trainer, with a random mid- or full-size model when asked (everything else is `Trainer`'s)."""

    size = "tiny"

    def load_model(self) -> None:
        if self.size == "tiny":
            return super().load_model()
        self.model = random_model(self.cfg.model.family, self.accelerator.device, self.size)
        self.resolution = run_resolution(self.cfg, self.model.native_size)
        self.noise_scheduler = self.model.noise_scheduler()
        self.run_info.update(model_name=self.model.source, prediction_type=self.model.prediction_type,
                             resolution=self.resolution, tiny_model=False)


# ----------------------------------------------------------------------------------------------- measuring
def reset_peak_rss() -> bool:
    """Reset the process's peak resident memory (Linux `clear_refs` 5) after handing freed heap memory back to the
    system (glibc's `malloc_trim`: else what earlier grid points freed stays resident and counts in this one's peak);
    False where it cannot be reset."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """Peak resident memory of the process since the last reset, in MiB (VmHWM; ru_maxrss elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory(device, rss_was_reset: bool) -> dict:
    """Peaks since the last reset: CUDA allocated and reserved (on a GPU), the process's resident memory."""
    cuda = torch.device(device).type == "cuda"
    return {"peak_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
            "peak_reserved_mib": torch.cuda.max_memory_reserved(device) / 2**20 if cuda else None,
            "peak_rss_mib": peak_rss_mib() if rss_was_reset else None}


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def device_peak_tflops(device, given: float | None) -> float | None:
    if given is not None:
        return given
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def make_images(folder: Path, count: int, size: int) -> Path:
    """`count` noise images of `size` px (what the bench trains on: the content does not change the time)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def summarize(times: list[float], batch: int) -> dict:
    median = statistics.median(times)
    return {"images_per_s": batch / median, "step_s_median": median, "step_s_min": min(times),
            "step_s_max": max(times), "steps_timed": len(times)}


def step_flops(trainer: Trainer, batch: dict) -> int | None:
    """FLOPs of one forward and backward pass of the trainer's step on `batch` (gradients cleared after)."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter:
            loss = trainer.compute_loss(batch)
            trainer.accelerator.backward(loss)
        return int(counter.get_total_flops())
    except Exception as e:  # an op the counter cannot follow: the MFU is left out, the timing stands
        log.warning("bench: FLOP count failed (%s: %s); MFU left out", type(e).__name__, e)
        return None
    finally:
        trainer.optimizer.zero_grad(set_to_none=True)


def plain_loop(trainer: Trainer, batch: dict, steps: int, warmup: int, device) -> list[float]:
    """The baseline: a plain PyTorch LoRA loop on the trainer's UNet and adapter, with the same optimizer type."""
    from diffusers import DDPMScheduler

    unet, params = trainer.model.unet, trainer.network_params
    opt = build_optimizer(trainer.cfg.optimizer, [{"params": params}])
    sched = DDPMScheduler.from_config(trainer.noise_scheduler.config)
    dtype = trainer.weight_dtype
    latents = batch["latents"].to(device, dtype)
    emb = batch["prompt_embeds"].to(device, dtype)
    added = None
    if trainer.model.family.size_conditioning:
        time_ids = sdxl_time_ids(batch["original_sizes"], batch["crops_top_left"], batch["target_size"])
        added = {"text_embeds": batch["pooled"].to(device, dtype), "time_ids": time_ids.to(device, dtype)}
    mp = trainer.mixed_precision
    autocast = torch.autocast(torch.device(device).type, dtype=dtype, enabled=mp in ("fp16", "bf16"))
    times = []
    for _ in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        noise = torch.randn_like(latents)
        t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), device=device)
        with autocast:
            pred = unet(sched.add_noise(latents, noise, t), t, emb, added_cond_kwargs=added, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - start)
    return times[warmup:]


def run_case(case: Case, steps: int, warmup: int, work: Path, *, size: str = "tiny",
             mixed_precision: str = "no", baseline: bool = False, peak_tflops: float | None = None) -> list[dict]:
    """Rows of one grid point: loraforge's, and the plain loop's with `baseline`."""
    images = make_images(work / f"images-{case.resolution}", max(2, case.batch), case.resolution)
    overrides = {
        "model.family": case.family, "output.output_dir": str(work / "runs"), "output.output_name": "bench",
        "output.log_with": "none", "output.overwrite": True, "sampling.at_end": False,
        "training.max_train_steps": warmup + steps, "training.batch_size": case.batch,
        "training.gradient_checkpointing": case.checkpointing, "training.mixed_precision": mixed_precision,
        "dataset.instance_dir": str(images), "dataset.instance_prompt": "a photo of sks noise",
        "dataset.resolution": case.resolution, "dataset.cache_latents": True,
        "dataset.cache_text_encoder_outputs": True, "network.rank": case.rank, "network.algo": case.algo,
        "optimizer.type": case.optimizer, "model.quantize_base": case.quantize,
        "training.channels_last": case.channels_last,
    }
    if case.optimizer == "prodigy":
        overrides["optimizer.learning_rate"] = 1.0
    cfg = load_config(None, [f"{k}={json.dumps(v) if not isinstance(v, bool) else str(v).lower()}"
                             for k, v in overrides.items()])
    gc.collect()  # what earlier grid points left is not counted in this one's peaks
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    rss_reset = reset_peak_rss()
    trainer = BenchTrainer(cfg)
    trainer.size = size
    try:
        trainer.prepare()
        device = trainer.accelerator.device
        gc.collect()
        build_rss = peak_rss_mib() if rss_reset else None  # building the model and filling the caches
        steps_rss_reset = reset_peak_rss()  # a second peak: the steps alone, without building and caching
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        batch = next(iter(trainer.train_dataloader))
        flops = step_flops(trainer, batch)
        if case.compile:
            compile_unet(trainer.model.unet, "default" if case.compile is True else case.compile)
        stamps: list[float] = []
        loss_of = trainer.compute_loss

        def timed_loss(*args, **kwargs):
            sync(device)
            stamps.append(time.perf_counter())
            return loss_of(*args, **kwargs)

        trainer.compute_loss = timed_loss
        trainer.train()
        sync(device)
        stamps.append(time.perf_counter())
        steps_rss = peak_rss_mib() if steps_rss_reset else None
        times = [b - a for a, b in zip(stamps, stamps[1:])][warmup:]
        peak = device_peak_tflops(device, peak_tflops)
        common = {**asdict(case), "size": size, "mixed_precision": trainer.mixed_precision,
                  "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
                  "flops_per_step": flops, "peak_tflops": peak}
        memory = peak_memory(device, rss_reset)
        if build_rss is not None and steps_rss is not None:
            memory["peak_rss_mib"] = max(build_rss, steps_rss)  # the whole point's: before and after the reset
        rows = [{**common, "impl": "loraforge", **summarize(times, case.batch), **memory,
                 "peak_rss_steps_mib": steps_rss, "optimizer_steps": trainer.state.global_step}]
        if baseline:  # its peak memory: during its own loop (the model is loaded already)
            rss_reset = reset_peak_rss()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times = plain_loop(trainer, batch, steps, warmup, device)
            rows.append({**common, "impl": "plain-pytorch", **summarize(times, case.batch),
                         **peak_memory(device, rss_reset), "optimizer_steps": warmup + steps})
        for row in rows:
            tflops = flops / row["step_s_median"] / 1e12 if flops else None
            row["achieved_tflops"] = tflops
            row["mfu"] = tflops / peak if tflops is not None and peak else None
        return rows
    finally:
        trainer.close()


def run_grid(cases: list[Case], steps: int = 5, warmup: int = 2, *, size: str = "tiny",
             mixed_precision: str = "no", baseline: bool = False, peak_tflops: float | None = None,
             work_dir: str | None = None) -> dict:
    """Every case in turn; the report: environment, settings and one row per case (and per baseline)."""
    if size not in SIZES:
        raise ToolError(f"bench: size {size!r} is not one of {', '.join(SIZES)}")
    if steps < 1 or warmup < 0:
        raise ToolError(f"bench: --steps must be 1 or more and --warmup 0 or more (got {steps}, {warmup})")
    rows = []
    with tempfile.TemporaryDirectory(prefix="loraforge-bench-", dir=work_dir) as tmp:
        for i, case in enumerate(cases):
            log.info("bench %d/%d: %s", i + 1, len(cases), case)
            rows += run_case(case, steps, warmup, Path(tmp) / f"case-{i}", size=size,
                             mixed_precision=mixed_precision, baseline=baseline, peak_tflops=peak_tflops)
    return {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "cuda": torch.version.cuda, "steps": steps, "warmup": warmup,
            "rows": rows}


COLUMNS = [("family", "{}"), ("size", "{}"), ("resolution", "{}"), ("batch", "{}"), ("rank", "{}"), ("checkpointing", "{}"),
           ("compile", "{}"), ("optimizer", "{}"), ("algo", "{}"), ("quantize", "{}"), ("channels_last", "{}"),
           ("impl", "{}"), ("images_per_s", "{:.2f}"),
           ("step_s_median", "{:.3f}"), ("step_s_min", "{:.3f}"), ("step_s_max", "{:.3f}"),
           ("peak_allocated_mib", "{:.0f}"), ("peak_reserved_mib", "{:.0f}"), ("peak_rss_mib", "{:.0f}"), ("peak_rss_steps_mib", "{:.0f}"),
           ("achieved_tflops", "{:.3f}"), ("mfu", "{:.1%}")]


def markdown(report: dict) -> str:
    """The rows as a Markdown table (— where a figure does not apply)."""
    head = "| " + " | ".join(name for name, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * len(COLUMNS)]
    for row in report["rows"]:
        cells = ["—" if row.get(name) is None else fmt.format(row[name]) for name, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["AXES", "Case", "grid", "run_grid", "run_case", "markdown", "random_model"]
