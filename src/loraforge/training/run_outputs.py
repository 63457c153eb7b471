"""The output phase of a training run (a part of `Trainer`): checkpoints, the final LoRA files (and EMA files),
sample images, and the validation loss with the best checkpoint it keeps. Split from trainer.py to keep each file
readable; the methods use the trainer's state (`self.cfg`, `self.network`, `self.accelerator`, ...)."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..config import dump_config
from ..sampling.run import sample_during_training
from ..utils.files import write_text_atomic
from .ema import save_ema_state, write_ema_files
from .metrics import log_sample_images
from .outputs import WrittenFiles, write_lora_files
from .state import FINAL_MARKER, checkpoints_dir, save_failed, write_checkpoint

log = logging.getLogger("loraforge.train")

BEST_FOLDER = "best"  # the LoRA files of the lowest validation loss (training.keep_best_validation)


@dataclass
class RunResult:
    run_dir: Path
    files: WrittenFiles
    samples: list[Path] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    validation_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) of this session
    steps: int = 0
    is_main_process: bool = True


class RunOutputs:
    def validate(self) -> float | None:
        """The validation loss of this step (main process), logged beside the training loss; with
        `keep_best_validation` a new lowest one writes its LoRA files to `best/` (`<output_name>-best.safetensors`)."""
        st, acc = self.state, self.accelerator
        if not acc.is_main_process:
            return None
        for mod in self.trained_models:
            mod.eval()
        try:
            value = self.validation.evaluate(self.step)
        finally:
            for mod in self.trained_models:
                mod.train()
        self.validation.history.append((st.global_step, value))
        acc.log({"loss/validation": value}, step=st.global_step)
        best = st.best_validation_loss is None or value < st.best_validation_loss
        self.metrics.validation(step=st.global_step, loss=value, best=best)
        log.info("step %d: validation loss %.5f%s", st.global_step, value,
                 " (lowest so far)" if best and st.best_validation_loss is not None else "")
        if best:
            st.best_validation_loss, st.best_validation_step = value, st.global_step
            if self.cfg.training.keep_best_validation:
                folder, name = self.run_dir / BEST_FOLDER, f"{self.cfg.output.output_name}-best"
                try:
                    write_lora_files(self.cfg, self.network, self.model, self._run_info(), folder, name, self.pivotal)
                except OSError as e:
                    raise save_failed(e, "the best-validation LoRA", folder, self.run_dir) from e
                log.info("step %d: kept in %s (training.keep_best_validation)", st.global_step, folder)
        return value

    def _checkpoint_files(self, folder: Path, name: str) -> WrittenFiles:
        """The LoRA files of a checkpoint, and the EMA state when there is one."""
        files = write_lora_files(self.cfg, self.network, self.model, self._run_info(), folder, name, self.pivotal)
        if self.ema:
            save_ema_state(self.ema, folder)
        return files

    # ----------------------------------------------------------------------------------------------- outputs
    def _run_info(self) -> dict:
        return {**self.run_info, "step": self.state.global_step, "epoch": self.state.epoch}

    def save_checkpoint(self) -> Path:
        """`checkpoints/step-N/` of this step (`state.write_checkpoint`), with the LoRA files of the step."""
        name = f"{self.cfg.output.output_name}-step{self.state.global_step:08d}"
        t = self.cfg.training
        folder = write_checkpoint(
            self.accelerator, self.run_dir, self.state, dump_config(self.cfg),
            lambda folder: self._checkpoint_files(folder, name),
            t.save_last_n_steps, t.save_last_n_epochs,
        )
        self.metrics.checkpoint(step=self.state.global_step, path=folder, run_dir=self.run_dir)
        return folder

    def finish(self) -> RunResult:
        acc = self.accelerator
        files = WrittenFiles()
        samples: list[Path] = []
        if self.validation and not any(s == self.state.global_step for s, _ in self.validation.history):
            self.validate()  # the last step has a validation loss too (before its checkpoint: the best is in it)
        # the last step is a checkpoint too, so a finished run continues with a larger max_train_steps and
        # training.resume = "latest" (a resume that ends where it started has it already)
        if not (checkpoints_dir(self.run_dir) / f"step-{self.state.global_step:06d}").is_dir():
            self.save_checkpoint()
        if acc.is_main_process:
            try:
                files = write_lora_files(self.cfg, self.network, self.model, self._run_info(), self.run_dir,
                                         self.cfg.output.output_name, self.pivotal)
            except OSError as e:
                raise save_failed(e, "the LoRA files", self.run_dir, self.run_dir) from e
            if self.ema:
                files.extra.update(write_ema_files(self.cfg, self.ema, self.network, self.model, self._run_info(),
                                                   self.run_dir, self.pivotal))
            for f in (files.kohya, files.diffusers, files.embeddings, *files.extra.values()):
                if f:
                    log.info("wrote %s", f)
            if self.cfg.sampling.at_end:
                samples = self.sample("final")
            try:
                write_text_atomic(self.run_dir / FINAL_MARKER, dump_config(self.cfg))
            except OSError as e:
                raise save_failed(e, "the finished-run marker", self.run_dir / FINAL_MARKER, self.run_dir) from e
        is_main = acc.is_main_process
        acc.end_training()
        self.close()
        return RunResult(self.run_dir, files, samples, self.losses, self.validation.history if self.validation else [],
                         self.state.global_step, is_main)

    def sample(self, tag: str) -> list[Path]:
        if not self.accelerator.is_main_process:
            return []
        for mod in self.trained_models:
            mod.eval()
        ema = self.ema.applied() if self.ema and self.cfg.training.ema_sampling else contextlib.nullcontext()
        try:
            with ema:
                files = sample_during_training(self.cfg, self.model, self.dataset.items, self.resolution,
                                              self.run_dir / "samples", tag, autocast=self.accelerator.autocast(),
                                              replace=self.pivotal.replace if self.pivotal else None,
                                              embeddings=self.pivotal.a1111_names(self.cfg.output.output_name)
                                              if self.pivotal else None, lora=bool(self.network.parts),
                                              tokens=self.pivotal.tokens if self.pivotal else None)
            self.metrics.sample(step=self.state.global_step, tag=tag, files=files, run_dir=self.run_dir)
            log_sample_images(self.accelerator, files, self.state.global_step)
            return files
        except OSError as e:  # a full disk or a read-only folder: said like a failed checkpoint
            if isinstance(e, FileNotFoundError):
                raise
            raise save_failed(e, "the sample images", self.run_dir / "samples", self.run_dir) from e
        finally:
            for mod in self.trained_models:
                mod.train()
