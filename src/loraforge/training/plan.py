"""The run plan: what a run will do, resolved by one function from the config (and from the model and the data
once they are loaded), so that `loraforge train --dry-run` and training agree: the model family and the training
resolution, the images (training vs class/regularisation), steps per epoch, total steps, epochs and the
learning-rate warm-up."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DEFAULT_MAX_TRAIN_STEPS, TrainConfig
from ..config.dataset import size_text
from ..config.training_flow import objective_problem
from ..data.build import TrainData, build_train_data
from ..data.sources import list_images
from ..errors import ConfigError
from ..families import Family, family
from ..models.loading import detect_model_family, native_size
from .optim import warmup_steps
from .pivotal import PivotalTuning, phases_text


@dataclass(frozen=True)
class RunPlan:
    family: Family
    is_tiny: bool  # the embedded tiny model
    resolution: tuple[int, int]  # (width, height)
    num_train_images: int  # instance / training images (repeats not counted)
    num_reg_images: int  # class (prior preservation) and regularisation images
    batches_per_epoch: int  # bucket batches of one epoch, all processes together
    num_processes: int
    steps_per_epoch: int  # optimizer steps
    max_steps: int
    num_epochs: int
    warmup_steps: int  # optimizer steps of learning-rate warm-up
    steps_from: str  # the option that set max_steps
    prior_batches: str | None = None  # `dataset.prior_batches` when there are class/regularisation images
    pairs_per_epoch: int | None = None  # paired prior batches: (training, class) pairs of an epoch
    notes: list[str] = field(default_factory=list)

    @property
    def batches_per_process(self) -> int:
        """Batches each process draws in an epoch (accelerate deals whole bucket batches round-robin)."""
        return math.ceil(self.batches_per_epoch / self.num_processes)

    def images_per_step(self, cfg: TrainConfig) -> int:
        """Images in one optimizer step, all processes together: a paired batch holds twice the batch size."""
        t = cfg.training
        per_batch = t.batch_size * (2 if self.prior_batches == "paired" else 1)
        return per_batch * t.gradient_accumulation_steps * self.num_processes

    def prior_line(self, cfg: TrainConfig) -> str | None:
        """How class images are batched (`dataset.prior_batches`), for the plan and the training log."""
        b, w = cfg.training.batch_size, cfg.dataset.prior_loss_weight
        per_step = self.images_per_step(cfg)
        if self.prior_batches == "paired":
            pairs = f"{self.pairs_per_epoch} pairs" if self.pairs_per_epoch else "counted once the class images exist"
            return (f"prior preservation: paired batches (diffusers): each batch holds {b} training + {b} class "
                    f"images, {per_step} images a step; loss = training mean + {w:g} (prior_loss_weight) × class "
                    f"mean; an epoch is {pairs} (max(training samples, class images), the shorter cycled)")
        if self.prior_batches == "mixed":
            return (f"prior preservation: mixed batches (kohya): class images are shuffled into the batches of {b} "
                    f"images ({per_step} images a step), as many per epoch as training samples, each weighted "
                    f'{w:g} (prior_loss_weight); dataset.prior_batches = "paired" batches them as diffusers does')
        return None

    def describe(self, cfg: TrainConfig) -> str:
        t, o = cfg.training, cfg.optimizer
        model = f"a tiny {self.family.label} model (the embedded architecture)" if self.is_tiny else self.family.label
        lines = [
            f"model: {model}, training at {size_text(self.resolution)}",
            f"images: {self.num_train_images} training + {self.num_reg_images} class/regularisation",
            f"steps: {self.max_steps} ({self.steps_from}) = {self.num_epochs} epoch(s) of {self.steps_per_epoch} "
            f"step(s); {self.batches_per_epoch} batch(es) an epoch, batch {t.batch_size} × accumulation "
            f"{t.gradient_accumulation_steps} × {self.num_processes} process(es)",
            f"learning rate: {o.lr_scheduler} schedule over {self.max_steps} steps, warm-up {self.warmup_steps} "
            "step(s)",
        ]
        prior = self.prior_line(cfg)
        phases = phases_text(cfg, self.max_steps, self.warmup_steps, self.family)
        return "\n".join(lines + ([prior] if prior else []) + ([phases] if phases else []) + self.notes)


def run_resolution(cfg: TrainConfig, native: int) -> tuple[int, int]:
    """(width, height): `dataset.resolution`, else the model's native size (64 px for the tiny and toy models)."""
    return cfg.dataset.size or (native, native)


def plan_run(cfg: TrainConfig, *, model=None, data: TrainData | None = None, num_processes: int = 1) -> RunPlan:
    """The plan of the run `cfg` describes. `model` (a loaded `SDModel`) gives the family, else it is detected
    without loading weights; `data` (the loaded `TrainData`) gives the images, else they are collected and checked
    here (every image opened, as training does). Class images that prior preservation will generate before training
    are not there yet: the plan then counts without them and says so in `notes`."""
    if model is not None:
        fam, is_tiny, native = model.family, model.is_tiny, model.native_size
    else:
        name, is_tiny = detect_model_family(cfg.model)
        fam, native = family(name), native_size(cfg.model, name, is_tiny)
        problem = objective_problem(cfg, fam)  # a dry run refuses what training would (min-SNR on FLUX...)
        if problem:
            raise ConfigError(problem)
    resolution = run_resolution(cfg, native)
    notes: list[str] = []
    if data is None:
        data = _load_data(cfg, resolution, notes)
    notes += [f"dataset: {note}" for note in data.notes]  # skipped files, duplicates, long captions
    t = cfg.training
    warmup = warmup_steps(cfg.optimizer)
    n_train = data.run_info["num_train_images"]
    batches = len(data.sampler)
    steps_per_epoch = max(1, math.ceil(math.ceil(batches / num_processes) / t.gradient_accumulation_steps))
    limits = []
    if t.max_train_steps:
        limits.append((t.max_train_steps, "training.max_train_steps"))
    elif t.max_train_steps_per_image:
        per_image = t.max_train_steps_per_image
        limits.append((per_image * n_train,
                       f"training.max_train_steps_per_image {per_image} × {n_train} training images"))
    if t.num_train_epochs:
        limits.append((t.num_train_epochs * steps_per_epoch, f"training.num_train_epochs {t.num_train_epochs}"))
    max_steps, steps_from = min(limits) if limits else (DEFAULT_MAX_TRAIN_STEPS, "the default")
    if len(limits) == 2 and limits[0][0] != limits[1][0]:
        (steps, by_steps), (epoch_steps, _) = limits
        notes.append(f"{by_steps.split(' ')[0]} ({steps} steps) and training.num_train_epochs ({epoch_steps} steps) "
                     f"are both set: the run stops at whichever comes first, {max_steps} steps. kohya's "
                     "max_train_epochs overrides max_train_steps instead; leave out the one you do not mean")
    if t.ti_steps is not None and t.ti_steps >= max_steps:
        raise ConfigError(f"training.ti_steps = {t.ti_steps} leaves no step of the run's {max_steps} ({steps_from}) "
                          "for the LoRA: make ti_steps smaller or the run longer")
    o, n, d = cfg.optimizer, cfg.network, cfg.dataset
    if o.text_encoder_lr is not None and not n.train_text_encoder and not t.train_text_encoder_ti:
        notes.append(f"optimizer.text_encoder_lr = {o.text_encoder_lr:g} has no effect: no text encoder trains "
                     "(network.train_text_encoder = false). kohya's train_network.py would train it; set "
                     "network.train_text_encoder = true for that, or drop text_encoder_lr")
    if warmup > max_steps:
        notes.append(f"optimizer.lr_warmup_steps = {warmup} is longer than the run ({max_steps} steps): the learning "
                     "rate never reaches optimizer.learning_rate")
    return RunPlan(
        family=fam, is_tiny=is_tiny, resolution=resolution, num_train_images=n_train,
        num_reg_images=data.run_info["num_reg_images"], batches_per_epoch=batches, num_processes=num_processes,
        steps_per_epoch=steps_per_epoch, max_steps=max_steps, num_epochs=math.ceil(max_steps / steps_per_epoch),
        warmup_steps=warmup, steps_from=steps_from, notes=notes,
        pairs_per_epoch=len(data.dataset) // 2 if data.dataset.paired else None,
        prior_batches=cfg.dataset.prior_batches if data.run_info["num_reg_images"] or d.with_prior_preservation
        else None,
    )


def _load_data(cfg: TrainConfig, resolution: tuple[int, int], notes: list[str]) -> TrainData:
    """The data as training loads it, before any model: without the class images prior preservation has yet to
    generate (noted in `notes`)."""
    missing = _missing_class_images(cfg)
    if missing:
        notes.append(f"prior preservation: {missing} of {cfg.dataset.num_class_images} class images are not in "
                     "dataset.class_data_dir yet; training generates them first, and this plan counts without "
                     "class images (steps per epoch too)")
        dataset = cfg.dataset.model_copy(update={"with_prior_preservation": False, "prior_batches": "mixed"})
        cfg = cfg.model_copy(update={"dataset": dataset})
    pivotal = PivotalTuning(cfg.training) if cfg.training.train_text_encoder_ti else None
    data = build_train_data(cfg, resolution, text_replacements=pivotal.replacements if pivotal else None)
    if pivotal:
        pivotal.check_captions(data.items)
    return data


def _missing_class_images(cfg: TrainConfig) -> int:
    d = cfg.dataset
    if not d.with_prior_preservation or not d.class_data_dir:
        return 0
    folder = Path(d.class_data_dir).expanduser()
    have = len(list_images(folder)) if folder.is_dir() else 0
    return max(0, d.num_class_images - have)
