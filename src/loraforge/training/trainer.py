"""The training run, in explicit phases: set up → load the model → check the data → inject the network →
optimizer → (resume) → loop → write the outputs → sample.

One `TrainConfig` comes in; nothing here reads globals or the command line. accelerate owns devices, mixed
precision, gradient accumulation and several GPUs (`accelerate launch -m loraforge train ...`).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path

import torch

from ..config import TrainConfig, dump_config
from ..config.dataset import size_text
from ..config.training_flow import objective_problem
from ..data.build import build_train_data, pin_memory
from ..data.cache import CacheContext
from ..errors import ConfigError, RunFolderError, RunInterruptedError
from ..models.loading import load_model
from ..networks import create_network
from ..utils.dtypes import torch_dtype
from .attention import set_attention
from .block_swap import BlockSwap, check_blocks_to_swap, swappable_blocks
from .checkpointing import enable_checkpointing
from .compile import check_static_shapes, compile_unet
from .ema import EMA, load_ema_state
from .interrupt import StopOnCtrlC
from .memory import MemoryWatch
from .metrics import METRICS_FILE, MetricsLog, tracker_scalars
from .nonfinite import NonFiniteGuard
from .optim import build_optimizer, build_scheduler, current_lrs, param_groups
from .pivotal import PivotalTuning
from .plan import RunPlan, plan_run, run_resolution
from .preflight import logging_folder, preflight, tracker_run
from .prior import ensure_class_images
from .placement import place_denoiser, place_encoders
from .report import write_report_quietly
from .release import release, releasable
from .run_outputs import RunOutputs, RunResult
from .state import (
    FINAL_MARKER,
    STATE_FILE,
    TrainState,
    check_fresh_start,
    check_resume,
    checkpoints_dir,
    clear_checkpoints,
    read_state,
    register_network_hooks,
    remove_stale_temporaries,
    resolve_resume,
)
from .step import LossStep
from .te_schedule import TextEncoderSchedule
from .timesteps import zero_terminal_snr_scheduler
from .validation import Validation

log = logging.getLogger("loraforge.train")

# kohya's network_alpha defaults to 1 (scale 1/rank); ours to the rank (scale 1): said where it matters
ALPHA_DEFAULT_NOTE = " (network.alpha unset: alpha = rank, scale 1; kohya's default is alpha 1, scale 1/rank)"


class Trainer(RunOutputs):
    """A run, phase by phase (the output phase, `RunOutputs`, is in run_outputs.py)."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.run_dir = Path(cfg.output.output_dir).expanduser() / cfg.output.output_name
        self.state = TrainState()
        self.losses: list[float] = []
        self.vae_dtype: torch.dtype | None = None  # set when the frozen parts reach the device (`place_frozen`)

    # ----------------------------------------------------------------------------------------------- phases
    def run(self) -> RunResult:
        try:
            self.prepare()
            self.train()
            result = self.finish()
            self._end("done")
            return result
        except RunInterruptedError as e:
            self._end("stopped", str(e))
            raise
        except BaseException as e:
            self._end("failed", f"{type(e).__name__}: {e}")
            raise
        finally:
            self.close()

    def _end(self, status: str, message: str = "") -> None:
        """The `end` line of metrics.jsonl (when the run got as far as opening it)."""
        if getattr(self, "metrics", None) is not None:
            self.metrics.end(step=self.state.global_step, status=status, message=message)
            if self.metrics.enabled:  # the main process: report.html beside the run's files
                write_report_quietly(self.run_dir)

    def prepare(self) -> None:
        """Every phase before the loop, after the pre-flight checks (before anything is written)."""
        for note in preflight(self.cfg):
            log.info("%s", note)
        self.setup()
        self.load_model()
        self.load_data()
        self.place_frozen()
        self.cache()  # before the denoiser reaches the device: the caches' encoders leave it first (FLUX's T5)
        self.setup_network()
        self.setup_optimization()
        self.maybe_resume()

    def setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

        cfg = self.cfg
        fresh = not cfg.training.resume
        if fresh and not cfg.output.overwrite:
            check_fresh_start(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        mp = cfg.training.mixed_precision
        if mp == "auto":
            mp = "no"
            if torch.cuda.is_available():
                mp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        # Several processes without a GPU (torchrun on CPUs) need accelerate's CPU mode to start gloo DDP.
        several = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.accelerator = Accelerator(
            cpu=several and not torch.cuda.is_available(),
            mixed_precision=mp,
            gradient_accumulation_steps=cfg.training.gradient_accumulation_steps,
            dataloader_config=DataLoaderConfiguration(non_blocking=pin_memory(cfg.training)),  # asynchronous copies
            log_with=None if cfg.output.log_with == "none" else cfg.output.log_with,
            project_config=ProjectConfiguration(project_dir=str(self.run_dir), logging_dir=str(logging_folder(cfg))),
        )
        if fresh and cfg.output.overwrite and self.accelerator.is_main_process:
            clear_checkpoints(self.run_dir)  # the old run's checkpoints would mix with this one's
            (self.run_dir / FINAL_MARKER).unlink(missing_ok=True)
            (self.run_dir / METRICS_FILE).unlink(missing_ok=True)
        self.accelerator.wait_for_everyone()
        self.metrics = MetricsLog(self.run_dir, enabled=self.accelerator.is_main_process,
                                  device=self.accelerator.device)
        self.memory_watch = MemoryWatch(cfg, self.accelerator.device)  # warns near the card's limit (CUDA)
        self.state.run_id = uuid.uuid4().hex  # kept by every checkpoint; a resume takes the checkpoint's
        self.mixed_precision = mp
        self.weight_dtype = torch_dtype(mp)
        root = logging.getLogger("loraforge")
        self._saved_level = root.level
        if not self.accelerator.is_main_process:
            root.setLevel(logging.WARNING)  # one console voice: the main process
        else:
            handler = logging.FileHandler(self.run_dir / "train.log", encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            handler.setLevel(logging.INFO)
            if root.getEffectiveLevel() > logging.INFO:
                root.setLevel(logging.INFO)  # the run log always gets the INFO lines
            root.addHandler(handler)
            self._log_handler = handler
            remove_stale_temporaries(self.run_dir)  # left by a killed or failed save (logged, so in train.log too)
        set_seed(cfg.training.seed, device_specific=True)  # seed + process index: each process its own noise
        self.run_info = {"session_id": uuid.uuid4().hex, "started_at": time.time(), "mixed_precision": mp}
        log.info("run folder: %s (device %s, precision %s)", self.run_dir, self.accelerator.device, mp)

    def load_model(self) -> None:
        # Straight into the weight dtype (no fp32 copy of the whole model at load), unless the VAE stays fp32
        # (`setup_network`): fp16 SD VAEs overflow, and fp32 weights rounded to fp16 and back are not the same.
        keep_fp32_vae = self.weight_dtype == torch.float16 or self.cfg.training.no_half_vae
        load_dtype = None if keep_fp32_vae or self.weight_dtype == torch.float32 else self.weight_dtype
        with self.accelerator.main_process_first():  # one process builds caches / downloads, the others reuse
            self.model = load_model(self.cfg.model, load_dtype)
        m = self.model
        self.resolution = run_resolution(self.cfg, m.native_size)
        self.noise_scheduler = m.noise_scheduler()
        # options the model's objective cannot honour (min-SNR on FLUX...), now that an "auto" family is known
        problem = objective_problem(self.cfg, m.family) or self.cfg.training.prediction_problem(m.prediction_type)
        if problem:
            raise ConfigError(problem)
        check_blocks_to_swap(self.cfg.training.blocks_to_swap, m, self.accelerator.num_processes)
        if self.cfg.training.zero_terminal_snr:
            self.noise_scheduler = zero_terminal_snr_scheduler(self.noise_scheduler)
        self.run_info.update(
            model_name=f"tiny-{m.family.name}" if m.is_tiny else Path(m.source).name,
            prediction_type=m.prediction_type, resolution=self.resolution, tiny_model=m.is_tiny,
        )
        log.info("model: %s — %s, predicts %s, training at %s", m.source, m.family.label, m.prediction_type,
                 size_text(self.resolution))

    def load_data(self) -> None:
        self.pivotal = PivotalTuning(self.cfg.training) if self.cfg.training.train_text_encoder_ti else None
        replacements = self.pivotal.replacements if self.pivotal else None
        if getattr(self.cfg.dataset, "with_prior_preservation", False):
            ensure_class_images(self.cfg, self.model, self.accelerator, self.resolution, replacements)
        self.data = build_train_data(self.cfg, self.resolution, text_replacements=replacements)
        if self.pivotal:
            self.pivotal.check_captions(self.data.items)
        self.dataset, self.sampler, self.dataloader = self.data.dataset, self.data.sampler, self.data.dataloader
        self.run_info.update(self.data.run_info)
        log.info("dataset: %s", self.data.describe())

    # ----------------------------------------------------------------------------------- data caches (data owner)
    def cache(self) -> None:
        """Fill the latent / text-encoder caches the dataset asks for with the frozen VAE and text encoders."""
        if not (self.data.wants_latent_cache or self.data.wants_text_cache):
            return
        m, d = self.model, self.cfg.dataset
        ctx = CacheContext(vae=m.vae, vae_dtype=self.vae_dtype, device=self.accelerator.device,
                           text_encoders=m.text_encoders, tokenizers=m.tokenizers, family=m.family,
                           clip_skip=self.cfg.training.clip_skip, max_token_length=d.max_token_length,
                           vae_batch_size=d.vae_batch_size)
        self.cache_stats = self.data.fill_caches(ctx)
        release(m, releasable(self.cfg))  # their memory, when nothing needs them
    # -----------------------------------------------------------------------------------------------------------

    def place_frozen(self) -> None:
        """The text encoders and the VAE onto the device in their dtypes (the caches use them); once."""
        if self.vae_dtype is None:
            self.vae_dtype = place_encoders(self.model, self.accelerator.device, self.weight_dtype,
                                            self.cfg.training.no_half_vae)

    def setup_network(self) -> None:
        m, t = self.model, self.cfg.training
        self.place_frozen()
        swapped = m.family.swap_blocks if t.blocks_to_swap else ()
        place_denoiser(m.unet, self.accelerator.device, self.weight_dtype, self.cfg.model.quantize_base,
                       t.channels_last, off_device=swapped)
        self.network = create_network(self.cfg.network)
        self.network.apply(m)
        for part in self.network.parts:  # trainable tensors in fp32 whatever the base dtype
            for p in self.network.parameters(part):
                p.data = p.data.float()
        self.block_swap = None
        if swapped:  # the blocks' frozen weights to CPU memory, the adapter's onto the device
            self.block_swap = BlockSwap(swappable_blocks(m.unet, swapped), t.blocks_to_swap,
                                        self.accelerator.device).install()
        if self.pivotal:
            gen = torch.Generator().manual_seed(self.cfg.training.seed)
            self.pivotal.apply(m, gen, self.network)
        set_attention(m.unet, t.attention)
        if t.torch_compile:
            check_static_shapes(t.torch_compile_mode, {size for _, size in self.dataset.bucket_keys()})
            compile_unet(m.unet, t.torch_compile_mode)
        enable_checkpointing(m.unet, m.text_encoders if self.train_te else [], t.gradient_checkpointing)
        self.network_params = [p for part in self.network.parts for p in self.network.parameters(part)]
        if not self.network.parts:  # network.algo = "none"
            log.info("network: none — textual inversion alone, only the new token embeddings train")
            return
        log.info("network: %s rank %d alpha %g%s on %s — %s trainable parameters", self.network.algo,
                 self.cfg.network.rank, self.network.alpha, ALPHA_DEFAULT_NOTE if self.cfg.network.alpha is None else "",
                 "+".join(self.network.parts), f"{sum(p.numel() for p in self.network_params):,}")

    @property
    def train_te(self) -> bool:
        """A text-encoder LoRA is trained."""
        return any(p.startswith("te") for p in getattr(self.network, "parts", ()))

    @property
    def text_needs_grad(self) -> bool:
        return self.train_te or bool(self.pivotal and self.pivotal.training)

    def setup_optimization(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        groups = param_groups(self.network, cfg.optimizer, self.pivotal.parameters() if self.pivotal else None)
        self.optimizer = build_optimizer(cfg.optimizer, groups)
        self.plan: RunPlan = plan_run(cfg, model=self.model, data=self.data, num_processes=acc.num_processes)
        self.steps_per_epoch, self.max_steps, self.num_epochs = (
            self.plan.steps_per_epoch, self.plan.max_steps, self.plan.num_epochs)
        self.lr_scheduler = build_scheduler(cfg.optimizer, self.optimizer, self.max_steps, acc.num_processes)
        self.pivot_at = self.pivotal.pivot_step(self.max_steps) if self.pivotal else None
        with_te = self.train_te or self.pivotal is not None
        trained = [self.model.unet] + (list(self.model.text_encoders) if with_te else [])
        prepared = acc.prepare(*trained, self.optimizer, self.dataloader, self.lr_scheduler)
        self.trained_models = list(prepared[: len(trained)])
        self.unet = self.trained_models[0]
        self.text_encoders = self.trained_models[1:] if with_te else self.model.text_encoders
        self.optimizer, self.train_dataloader, self.lr_scheduler = prepared[len(trained):]
        register_network_hooks(acc, self.network, self.pivotal)
        self.te_schedule = TextEncoderSchedule.from_config(cfg.training, self.network, self.max_steps)
        self.ema = EMA.from_config(cfg.training, self.network_params + (self.pivotal.parameters() if self.pivotal else []))
        self.validation = Validation.from_config(cfg.training, self.data.validation,
                                                 self.noise_scheduler.config.num_train_timesteps)
        self.step = LossStep(
            training=cfg.training, model=self.model, unet=self.unet, text_encoders=self.text_encoders,
            noise_scheduler=self.noise_scheduler, device=acc.device, weight_dtype=self.weight_dtype,
            vae_dtype=self.vae_dtype, resolution=self.resolution, text_needs_grad=lambda: self.text_needs_grad,
            max_token_length=cfg.dataset.max_token_length, prior_batches=cfg.dataset.prior_batches)
        self.run_info.update(
            max_train_steps=self.max_steps, batches_per_epoch=self.plan.batches_per_process, epochs=self.num_epochs,
            total_batch_size=cfg.training.batch_size * acc.num_processes * cfg.training.gradient_accumulation_steps,
            optimizer=type(self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer).__name__,
        )
        if acc.is_main_process and cfg.output.log_with != "none":
            logging_folder(cfg).mkdir(parents=True, exist_ok=True)
            name, init_kwargs = tracker_run(cfg)
            acc.init_trackers(name, config={"max_train_steps": self.max_steps, "rank": cfg.network.rank},
                              init_kwargs=init_kwargs)
        log.info("training %d steps (%d per epoch, %d epochs), batch %d × accumulation %d × %d process(es)",
                 self.max_steps, self.steps_per_epoch, self.num_epochs, cfg.training.batch_size,
                 cfg.training.gradient_accumulation_steps, acc.num_processes)
        if self.plan.prior_line(cfg):
            log.info("%s", self.plan.prior_line(cfg))
        for note in self.plan.notes:  # what --dry-run prints too (the dataset's own notes are in its description)
            if note.removeprefix("dataset: ") not in self.data.notes:
                log.warning("note: %s", note)

    def maybe_resume(self) -> None:
        if not self.cfg.training.resume:
            return
        folder = resolve_resume(self.cfg.training.resume, self.run_dir)
        run_id = self.state.run_id
        step = check_resume(folder, self.run_dir, dump_config(self.cfg)).global_step
        if step > self.max_steps:  # equal is fine: a run stopped while writing its final files
            raise RunFolderError(
                f"training.resume: {folder} is at step {step}, past this run's end (training.max_train_steps or the "
                f"epochs give {self.max_steps} steps); resuming would write step {step} as the final LoRA of a "
                f"shorter run. Set training.max_train_steps to {step} or more, or resume an earlier checkpoint"
            )
        self.accelerator.load_state(str(folder))
        self.state = read_state(folder)
        if self.ema:
            load_ema_state(self.ema, folder)
        self.state.run_id = self.state.run_id or run_id  # a checkpoint of an older loraforge has none
        self._maybe_pivot()
        log.info("resumed from %s at step %d (epoch %d)", folder, self.state.global_step, self.state.epoch)

    # ----------------------------------------------------------------------------------------------- the loop
    def train(self) -> None:
        """The loop; Ctrl-C stops it after the current step with a checkpoint of that step (`RunInterruptedError`)."""
        from accelerate.utils import tqdm

        cfg, acc, st = self.cfg, self.accelerator, self.state
        for mod in self.trained_models:
            mod.train()
        import sys

        # on a terminal: a live bar (step, loss, lr, it/s, ETA); in a pipe or a log file: a line every 30 s
        bar = self._bar = tqdm(total=self.max_steps, initial=st.global_step, desc="training", unit="step",
                               dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30.0)
        self.nonfinite = NonFiniteGuard(cfg.training, acc, self.run_dir)
        self.metrics.start(run_id=st.run_id, max_steps=self.max_steps, step=st.global_step,
                           resumed=bool(cfg.training.resume))
        with StopOnCtrlC() as ctrl_c:
            self._loop(bar, ctrl_c)
        bar.close()
        if self.nonfinite.skipped:
            log.warning("NaN/Inf: %d optimizer step(s) skipped in this run (training.on_nonfinite = \"skip\")",
                        self.nonfinite.skipped)
        acc.wait_for_everyone()

    def _loop(self, bar, ctrl_c: StopOnCtrlC) -> None:
        from accelerate import skip_first_batches

        cfg, acc, st = self.cfg, self.accelerator, self.state
        n_batches = len(self.train_dataloader)
        while st.global_step < self.max_steps and st.epoch < self.num_epochs:
            loader = self.train_dataloader
            if st.batch_in_epoch:
                loader = skip_first_batches(loader, st.batch_in_epoch)
            # accelerate's loaders set the epoch of our sampler and dataset from their own iteration counter when
            # iterated; a resumed run's loaders must count from the resumed epoch, so set it on the loader itself.
            loader.set_epoch(st.epoch)
            for batch in loader:
                self._maybe_pivot()
                with acc.accumulate(*self.trained_models):
                    loss = self.compute_loss(batch)
                    acc.backward(loss)
                    if self.pivotal:  # phased: the network waits while the embeddings train
                        self.pivotal.hold_network(self.network_params)
                    if self.te_schedule:  # training.stop_text_encoder_training / _frac / alternate phases
                        self.te_schedule.hold(st.global_step)
                    skip = self.nonfinite.check(loss, self.trainable_parameters(), st.global_step + 1,
                                                current_lrs(self.optimizer, self.lr_scheduler))
                    self._grad_norm = None
                    if acc.sync_gradients and cfg.optimizer.max_grad_norm and not skip:
                        self._grad_norm = acc.clip_grad_norm_(self.trainable_parameters(),
                                                              cfg.optimizer.max_grad_norm)
                    if not skip:  # a skipped step (training.on_nonfinite = "skip") does not count
                        self.optimizer.step()
                        self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                st.batch_in_epoch += 1
                epoch_end = st.batch_in_epoch >= n_batches
                if epoch_end:  # the position is "start of the next epoch" from here on (also in checkpoints)
                    st.epoch, st.batch_in_epoch = st.epoch + 1, 0
                if acc.sync_gradients and not skip:
                    st.global_step += 1
                    self._after_step(loss, bar)
                if epoch_end:
                    self._after_epoch()
                if acc.sync_gradients and not skip and self._stop_requested(ctrl_c):
                    self._stop_at_checkpoint()
                if st.global_step >= self.max_steps:
                    break

    def _stop_requested(self, ctrl_c: StopOnCtrlC) -> bool:
        """Ctrl-C was pressed (in any process: with several, all stop at the same step)."""
        if self.accelerator.num_processes == 1:
            return ctrl_c.requested
        flag = torch.tensor([float(ctrl_c.requested)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item())

    def _stop_at_checkpoint(self) -> None:
        st = self.state
        target = checkpoints_dir(self.run_dir) / f"step-{st.global_step:06d}"
        if not (target / STATE_FILE).is_file():  # not saved by save_every_n_* at this step already
            target = self.save_checkpoint()
        raise RunInterruptedError(
            f"stopped by Ctrl-C after step {st.global_step} of {self.max_steps}: the checkpoint {target} holds it. "
            "Continue the run with training.resume = \"latest\" (--set training.resume=latest)"
        )

    # The step's math is `self.step` (a `LossStep`); the loop and the tests call it through these.
    def compute_loss(self, batch: dict, latents=None, noise=None, timesteps=None) -> torch.Tensor:
        return self.step.compute_loss(batch, latents, noise, timesteps)

    def encode_latents(self, pixel_values: torch.Tensor, seeds: list[int] | None = None) -> torch.Tensor:
        return self.step.encode_latents(pixel_values, seeds)

    def make_noise(self, latents: torch.Tensor, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.step.make_noise(latents, seeds)

    def encode_batch_text(self, captions: list[str]):
        return self.step.encode_batch_text(captions)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters this step trains (clipped, checked for NaN): one list, rebuilt only when pivotal tuning
        or the text-encoder schedule changes phase."""
        phase = ((self.pivotal.network_waits, self.pivotal.training) if self.pivotal else None,
                 self.te_schedule.idle(self.state.global_step) if self.te_schedule else None)
        cached = getattr(self, "_trainable", None)
        if cached is None or cached[0] != phase:
            params = self.pivotal.step_parameters(self.network_params) if self.pivotal else list(self.network_params)
            if self.te_schedule:
                params = self.te_schedule.still_training(params, self.state.global_step)
            self._trainable = cached = (phase, params)
        return cached[1]

    def _maybe_pivot(self) -> None:
        if self.pivotal and self.pivotal.training and self.state.global_step >= self.pivot_at:
            self.pivotal.freeze()
            t = self.cfg.training
            why = f"ti_steps = {t.ti_steps}" if t.ti_steps else f"train_text_encoder_ti_frac = {t.train_text_encoder_ti_frac:g}"
            log.info("step %d: new token embeddings frozen (%s); the LoRA %s", self.state.global_step, why,
                     "trains from here" if t.ti_steps else "goes on")

    def _after_step(self, loss: torch.Tensor, bar) -> None:
        cfg, acc, st = self.cfg, self.accelerator, self.state
        logs = {}
        if cfg.optimizer.scale_weight_norms:
            scaled, mean_norm, max_norm = self.network.apply_max_norm(cfg.optimizer.scale_weight_norms)
            logs.update({"max_norm/keys_scaled": scaled, "max_norm/mean": mean_norm, "max_norm/max": max_norm})
        value = acc.gather(loss.detach()).mean().item()
        self.losses.append(value)
        lrs = current_lrs(self.optimizer, self.lr_scheduler)
        logs.update({"loss": value, **{f"lr/{k}": v for k, v in lrs.items()}})
        extra = {}
        if getattr(self, "_grad_norm", None) is not None:
            logs["grad_norm"] = extra["grad_norm"] = float(self._grad_norm)
        d = self.optimizer.param_groups[0].get("d")  # Prodigy / D-Adaptation's step-size estimate
        if isinstance(d, (int, float)):
            logs["prodigy/d"] = extra["d"] = float(d)
        bar.update(1)
        # refresh=False: the bar writes at its own interval (set_postfix's default refresh writes a line per step)
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{next(iter(lrs.values())):.2e}", epoch=st.epoch, refresh=False)
        record = self.metrics.step(step=st.global_step, epoch=st.epoch, max_steps=self.max_steps, loss=value,
                                   lrs=lrs, **extra)
        acc.log({**logs, **tracker_scalars(record)}, step=st.global_step)
        self.memory_watch.check(step=st.global_step)
        if self.ema:
            self.ema.step(st.global_step)
        if self.validation and self.validation.due(st.global_step, self.validation.every_n_steps):
            self.validate()
        self._periodic(st.global_step, cfg.training.save_every_n_steps, cfg.sampling.sample_every_n_steps,
                       f"{st.global_step:06d}")

    def _after_epoch(self) -> None:
        cfg, st = self.cfg, self.state
        if self.validation and self.validation.due(st.epoch, self.validation.every_n_epochs):
            self.validate()
        self._periodic(st.epoch, cfg.training.save_every_n_epochs, cfg.sampling.sample_every_n_epochs,
                       f"e{st.epoch:03d}")

    def _periodic(self, count: int, save_every: int | None, sample_every: int | None, tag: str) -> None:
        """Checkpoint (not at the last step: `finish` saves that one) and/or sample every N steps or epochs."""
        if save_every and count % save_every == 0 and self.state.global_step < self.max_steps:
            self.save_checkpoint()
        if sample_every and count % sample_every == 0:
            self.sample(tag)

    def close(self) -> None:
        """Release what the run holds in the process: the log file, and accelerate's process-wide state (so a
        next run in this process may choose another precision or accumulation)."""
        if getattr(self, "_bar", None) is not None:  # a run stopped by an error: the bar ends before its message
            self._bar.close()
            self._bar = None
        acc = getattr(self, "accelerator", None)
        if acc is not None:
            self.accelerator = None
            logging.getLogger("loraforge").setLevel(self._saved_level)
            if acc.num_processes == 1:
                from accelerate.state import AcceleratorState, GradientState

                AcceleratorState._reset_state()
                GradientState._reset_state()
        handler = getattr(self, "_log_handler", None)
        if handler is not None:
            logging.getLogger("loraforge").removeHandler(handler)
            handler.close()
            self._log_handler = None
