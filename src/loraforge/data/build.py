"""From `[dataset]` to what the training loop iterates: items (checked), the dataset, its bucket batch sampler and
loader, and (once a model is there) the latent and text-encoder caches."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from .buckets import BucketBatchSampler, PairedBatchSampler
from .cache import CacheContext, fill_latent_cache, fill_text_cache
from .check import duplicate_notes, long_caption_note, validate_items
from .dataset import ImageCaptionDataset, collate
from ..errors import DataError
from .images import face_box
from .kohya_toml import plan_from_file
from .sources import ImageItem
from .subsets import DataPlan, Subset, collect_plan_items, native_plan
from .masks import MaskSource
from .validation import hold_out, validation_dataset

log = logging.getLogger(__name__)



def collect_all(cfg, resolution: tuple[int, int]) -> DataPlan:
    """Every subset, group and image of the run described by `cfg` (a `TrainConfig`): from the kohya dataset config
    file when one is named, else from `[dataset]`."""
    plan = plan_from_file(cfg, resolution) if cfg.dataset.config_file else native_plan(cfg, resolution)
    return collect_plan_items(plan, cfg.dataset)


def wants_latent_cache(d) -> bool:
    """`[dataset]` `d` caches latents (in memory or on disk)."""
    return d.cache_latents or d.cache_latents_to_disk


def wants_text_cache(d) -> bool:
    """`[dataset]` `d` caches text-encoder outputs (in memory or on disk)."""
    return d.cache_text_encoder_outputs or d.cache_text_encoder_outputs_to_disk


@dataclass
class TrainData:
    items: list[ImageItem]
    dataset: ImageCaptionDataset
    sampler: BucketBatchSampler
    dataloader: torch.utils.data.DataLoader
    run_info: dict = field(default_factory=dict)  # for the ss_* metadata
    plan: DataPlan | None = None
    cfg: object = None
    notes: list[str] = field(default_factory=list)  # summary lines: skipped files, duplicates, long captions
    validation: ImageCaptionDataset | None = None  # the held-out images of the validation loss

    def describe(self) -> str:
        info = self.run_info
        text = (f"{info.get('num_train_images', len(self.items))} images ({len(self.dataset)} samples per epoch with "
                f"repeats) from {', '.join(info.get('dataset_dirs', {}))}")
        if info.get("num_reg_images"):
            text += f", {info['num_reg_images']} of them regularisation/class images"
            if self.dataset.paired:
                text += f" paired with the training samples ({len(self.dataset) // 2} pairs)"
        text += f"; {len(self.sampler)} batches per epoch"
        if info.get("bucket_info"):
            text += ", buckets " + ", ".join(f"{k}: {v}" for k, v in info["bucket_info"].items())
        return "\n".join([text] + [f"  {note}" for note in self.notes])

    @property
    def wants_latent_cache(self) -> bool:
        return wants_latent_cache(self.cfg.dataset)

    @property
    def wants_text_cache(self) -> bool:
        return wants_text_cache(self.cfg.dataset)

    def fill_caches(self, ctx: CacheContext) -> dict:
        """Fill the requested caches with the model in `ctx`; returns hit/miss counts per cache."""
        stats = {}
        if self.wants_latent_cache:
            c = fill_latent_cache(self.dataset, self.cfg.dataset, ctx)
            stats["latents"] = {"hits": c.hits, "misses": c.misses}
        if self.wants_text_cache:
            c = fill_text_cache(self.dataset, self.cfg.dataset, ctx)
            stats["text"] = {"hits": c.hits, "misses": c.misses}
        return stats


def check_cache_options(cfg, subsets: list[Subset], text_replacements: dict | None = None) -> None:
    """Refuse caches that would be stale: random crops with cached latents; captions that vary per step, a trained
    text encoder or pivotal tuning with cached text-encoder outputs."""
    d = cfg.dataset
    if d.cache_latents or d.cache_latents_to_disk:
        crops = [s.name for s in subsets if s.random_crop]
        if crops:
            opt = "dataset.cache_latents_to_disk" if d.cache_latents_to_disk else "dataset.cache_latents"
            raise DataError(
                f"{opt} cannot be combined with random crops (dataset.center_crop = false, or kohya random_crop, in "
                f"{', '.join(crops)}): the crop changes every step and a cached latent has one; set center_crop = "
                f"true or turn {opt} off",
            )
        varying = (("color_aug", "the colours change", [s.name for s in subsets if s.color_aug]),
                   ("face_crop_aug_range", "the face crop changes", [s.name for s in subsets if s.face_crop_aug_range]))
        for name, what, where in varying:
            if where:
                opt = "dataset.cache_latents_to_disk" if d.cache_latents_to_disk else "dataset.cache_latents"
                raise DataError(
                    f"{opt} cannot be combined with dataset.{name} (in {', '.join(where)}): {what} every step and "
                    f"a cached latent has one; turn {name} or {opt} off (neither dataset.color_aug nor "
                    "dataset.face_crop_aug_range works with cached latents)",
                )
    if not (d.cache_text_encoder_outputs or d.cache_text_encoder_outputs_to_disk):
        return
    opt = "dataset.cache_text_encoder_outputs" + ("_to_disk" if d.cache_text_encoder_outputs_to_disk else "")
    conflicts: dict[str, str] = {}
    for s in subsets:
        for name in s.captions.varying():
            conflicts.setdefault(f"dataset.{name}", s.name)
    why = "the captions change from step to step"
    if cfg.network.train_text_encoder:
        conflicts["network.train_text_encoder"] = ""
        why = "the text encoder's outputs change as it trains"
    if getattr(cfg.training, "train_text_encoder_ti", False):
        conflicts["training.train_text_encoder_ti"] = ""
        why = "pivotal tuning trains new token embeddings, which changes the text encoder's outputs"
    if conflicts:
        names = ", ".join(conflicts)
        raise DataError(
            f"{opt} cannot be combined with {names}: {why}, so cached outputs would be stale; turn {opt} off, or "
            f"turn off {names}",
            [f"{k} is set" + (f" (in {v})" if v else "") for k, v in conflicts.items()],
        )


def check_face_crop(plan: DataPlan) -> list[str]:
    """Refuse the face crop with buckets (it cuts the training resolution, which buckets replace; sd-scripts
    ignores the face box there). Returns a summary note on the face-crop images without a face box in their name."""
    bucketed = [s.name for s in plan.subsets if s.face_crop_aug_range and plan.groups[s.group].buckets.enable]
    if bucketed:
        raise DataError(
            f"dataset.face_crop_aug_range cannot be combined with dataset.enable_bucket (in {', '.join(bucketed)}): "
            "the face crop is cut to the training resolution, which buckets replace (sd-scripts ignores the face box "
            "with buckets); set enable_bucket = false or remove face_crop_aug_range",
        )
    plain = [it.path.name for it in plan.items
             if plan.subsets[it.subset].face_crop_aug_range and (not it.is_file or face_box(it.path) is None)]
    if not plain:
        return []
    shown = ", ".join(plain[:3]) + (", ..." if len(plain) > 3 else "")
    return [f"{len(plain)} image(s) with face_crop_aug_range have no face box in their file name (name_cx_cy_w_h), "
            f"so they are resized and cropped as usual: {shown}"]


def pin_memory(training) -> bool:
    """`training.pin_memory`: pinned batches (copied to the GPU without blocking); `auto` = on when CUDA is there."""
    return torch.cuda.is_available() if training.pin_memory == "auto" else bool(training.pin_memory)


def build_train_data(cfg, resolution: tuple[int, int], text_replacements: dict | None = None,
                     cache_context: CacheContext | None = None) -> TrainData:
    """`cfg` is the whole `TrainConfig` (dataset, batch size, workers, seed). `text_replacements` are applied to
    every caption as the last step (pivotal tuning's `{"TOK": "<s0><s1>"}`). With `cache_context` the requested
    caches are filled before returning; otherwise `TrainData.fill_caches` does it later (the trainer's caching
    phase)."""
    d, t = cfg.dataset, cfg.training
    plan = collect_all(cfg, resolution)
    plan.items = validate_items(plan.items, d, resolution)
    plan.items, held_out, held_subsets = hold_out(cfg, plan, resolution)
    check_cache_options(cfg, plan.subsets, text_replacements)
    face_notes = check_face_crop(plan)
    if t.masked_loss and any(s.face_crop_aug_range for s in plan.subsets):
        raise DataError("training.masked_loss cannot be combined with dataset.face_crop_aug_range (the face crop "
                        "moves the image, not its mask); remove face_crop_aug_range or turn masked_loss off")
    dataset = ImageCaptionDataset(
        plan.items, resolution, seed=t.seed, subsets=plan.subsets, groups=plan.groups,
        prior_loss_weight=d.prior_loss_weight, text_replacements=text_replacements, prior_batches=d.prior_batches,
    )
    dataset.masks = MaskSource.from_config(cfg)
    if dataset.masks:
        dataset.masks.check(plan.items, plan.subsets)
    empty = [str(dataset.items[i].path) for i, b in enumerate(dataset.item_buckets) if min(b) <= 0]
    if empty:
        raise DataError("image(s) smaller than dataset.bucket_reso_steps get an empty bucket with "
                        "bucket_no_upscale; remove them or lower bucket_reso_steps", empty)
    if len(dataset) == 0:
        raise DataError("the dataset has no training images (regularisation images alone cannot be trained on)")
    sampler_type = PairedBatchSampler if dataset.paired else BucketBatchSampler
    sampler = sampler_type(dataset.bucket_keys(), dataset.batch_sizes(), t.seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=t.dataloader_num_workers,
        persistent_workers=t.dataloader_num_workers > 0,
        pin_memory=pin_memory(t),
        # Its own generator: creating an epoch's iterator must not draw from the global RNG that noise and
        # timesteps come from, or a resumed run would drift from an uninterrupted one.
        generator=torch.Generator().manual_seed(t.seed),
    )
    info = plan.run_info()
    if any(g.buckets.enable for g in plan.groups):
        info["bucket_info"] = sampler.summary()
    if info["num_reg_images"]:
        info["ss_prior_loss_weight"] = d.prior_loss_weight
    if d.max_token_length != 75:  # kohya's metadata: unset means 75
        info["ss_max_token_length"] = d.max_token_length
    if any(s.color_aug for s in plan.subsets):
        info["ss_color_aug"] = True
    faces = [s.face_crop_aug_range for s in plan.subsets if s.face_crop_aug_range]
    if faces:  # kohya writes the tuple, e.g. "(2.0, 4.0)"; with per-subset ranges, the first
        info["ss_face_crop_aug_range"] = faces[0]
    validation = None
    if held_out:
        info["num_validation_images"] = len(held_out)
        validation = validation_dataset(held_out, held_subsets, plan.groups, resolution,
                                        t.seed if t.validation_seed is None else t.validation_seed, text_replacements)
        face_notes.append(f"validation loss: {len(held_out)} held-out image(s), each at {t.validation_timesteps} "
                          "fixed timestep(s) with fixed noise")
    notes = plan.notes + face_notes + duplicate_notes(plan.items) + [long_caption_note(dataset, d.max_token_length)]
    data = TrainData(plan.items, dataset, sampler, loader, info, plan, cfg, [n for n in notes if n], validation)
    if cache_context is not None:
        data.fill_caches(cache_context)
    return data
