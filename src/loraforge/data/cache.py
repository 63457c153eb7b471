"""Latent and text-encoder output caches, in memory or on disk.

Latents: the VAE's latent *distribution* (mean and std) is stored, and each step draws its sample from it with a
generator seeded by (seed, epoch, index) — exactly what the uncached path does with the live VAE — so caching changes
speed, never the numbers. An entry's name is a hash of the image bytes, the bucket, the crop, the flip and the VAE
(config, a sample of its weights, dtype): a changed image or setting never reuses a stale entry. Random crops are
refused with the cache (there is one crop per step); random flips cache both orientations.

Text encoders: the outputs for each distinct caption, named by a hash of the caption and the encoders. Refused with
captions that vary per step and with trained text encoders (`check_cache_options`).

Disk files are safetensors (never pickle or npz) in the VAE's / text encoders' dtype, in `<image folder>/.loraforge_cache/`
or `dataset.cache_dir`, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..families import Family
from ..models.text import CHUNKED, encode_prompts
from ..utils.files import cache_home, remove_temporaries, save_safetensors_atomic
from ..errors import DataError
from .images import center_crop_offset, file_bytes

log = logging.getLogger(__name__)

CACHE_FOLDER = ".loraforge_cache"
FORMAT = "loraforge-cache-1"


@dataclass
class CacheContext:
    """What filling the caches needs from the model (the trainer builds one in its caching phase)."""

    vae: Any = None
    vae_dtype: torch.dtype = torch.float32
    device: Any = "cpu"
    text_encoders: list = field(default_factory=list)
    tokenizers: list = field(default_factory=list)
    family: Family | None = None  # how prompts condition the UNet (the text cache needs it)
    clip_skip: int | None = None
    max_token_length: int | None = None  # kohya's chunked prompts (150 / 225); None or 75: one 77-token window
    vae_batch_size: int = 1


SAMPLED_ROWS = 16  # rows of each fingerprinted tensor (and its last row, where new token embeddings go)


def module_identity(module, extra: str = "") -> str:
    """A fingerprint of a model: its config, and the shape, dtype and a sample of whole rows (evenly spaced along
    the first dimension, plus the last) of a few weight tensors. Whole rows, not a strided sample of every row:
    that read every page of a token-embedding table (hundreds of MiB of memory-mapped weights)."""
    h = hashlib.sha256(extra.encode())
    config = getattr(module, "config", {})
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    params = list(module.parameters())
    for p in (params[0], params[len(params) // 2], params[-1]):
        rows = p.detach().reshape(p.shape[0] if p.dim() else 1, -1)
        picked = torch.linspace(0, rows.shape[0] - 1, min(SAMPLED_ROWS, rows.shape[0])).long().tolist()
        for i in sorted({*picked, rows.shape[0] - 1}):
            h.update(rows[i].float().cpu().numpy().tobytes())
        h.update(f"{tuple(p.shape)}{p.dtype}".encode())
    return h.hexdigest()[:24]


def _digest(*parts) -> str:
    return hashlib.sha256("|".join(str(p) for p in (FORMAT, *parts)).encode()).hexdigest()[:40]


class _Store:
    """Entries by key: in memory, or as safetensors files (read back on every use)."""

    def __init__(self, to_disk: bool, cache_dir: str | None):
        self.to_disk = to_disk
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.memory: dict[str, dict[str, torch.Tensor]] = {}
        self.hits = self.misses = 0
        self._swept: set[Path] = set()

    def folder(self, item) -> Path:
        if self.cache_dir is not None:
            folder = self.cache_dir
        else:
            folder = item.path.parent / CACHE_FOLDER if item.is_file else cache_home() / "data-cache"
        if self.to_disk and folder not in self._swept:  # what a killed run left (an hour old: not a live writer's)
            self._swept.add(folder)
            for path in remove_temporaries(folder, older_than_s=3600) if folder.is_dir() else ():
                log.info("removed %s (left by an interrupted cache write)", path)
        return folder

    def file(self, key: str, item) -> Path:
        return self.folder(item) / f"{key}.safetensors"

    def has(self, key: str, item) -> bool:
        if not self.to_disk:
            return key in self.memory
        path = self.file(key, item)
        if not path.is_file():
            return False
        try:  # a truncated or foreign file is a miss (and gets rewritten)
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                return (f.metadata() or {}).get("format") == FORMAT
        except Exception:
            return False

    def get(self, key: str, item) -> dict[str, torch.Tensor]:
        if not self.to_disk:
            return self.memory[key]
        from safetensors.torch import load_file

        return load_file(str(self.file(key, item)))

    def put(self, key: str, item, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        if self.to_disk:
            save_safetensors_atomic(tensors, self.file(key, item), {"format": FORMAT, **meta})
        else:
            self.memory[key] = tensors


class LatentCache(_Store):
    def __init__(self, identity: str, scale: float, shift: float, to_disk: bool, cache_dir: str | None):
        super().__init__(to_disk, cache_dir)
        self.identity, self.scale, self.shift = identity, scale, shift
        self._hashes: dict[int, str] = {}

    def content_hash(self, dataset, item_index: int) -> str:
        if item_index not in self._hashes:
            it = dataset.items[item_index]
            self._hashes[item_index] = hashlib.sha256(file_bytes(it.path, it.data)).hexdigest()
        return self._hashes[item_index]

    def key(self, dataset, item_index: int, flip: bool) -> str:
        bucket = dataset.item_buckets[item_index]
        crop = center_crop_offset(dataset.size_of(item_index), bucket)
        return _digest(self.content_hash(dataset, item_index), f"{bucket[0]}x{bucket[1]}", crop, int(flip), self.identity)

    def latents_for(self, dataset, item_index: int, flip: bool, seed: int) -> torch.Tensor:
        key = self.key(dataset, item_index, flip)
        try:
            entry = self.get(key, dataset.items[item_index])
        except (KeyError, OSError) as e:
            raise DataError(
                f"{dataset.items[item_index].path}: no cached latents (flip={flip}); the cache was not filled or its "
                f"file was removed during training ({e})"
            ) from None
        return sample_latents(entry["mean"], entry["std"], seed, self.scale, self.shift)


def sample_latents(mean, std, seeds, scale: float, shift: float) -> torch.Tensor:
    """Scaled latents drawn from N(mean, std²) with a CPU generator per sample (`seeds`: an int for one sample
    [C, h, w], a list for a batch). The same formula serves the cache and the live VAE path. On the CPU on purpose:
    the cache draws in the data loader, the live path next to the VAE, and both must draw the same numbers (a GPU
    generator gives others); with cached latents the draw is made where the latents already are."""
    one = isinstance(seeds, int)
    mean, std = (mean[None], std[None]) if one else (mean, std)
    eps = torch.stack([
        torch.randn(mean.shape[1:], generator=torch.Generator().manual_seed(int(s)), dtype=torch.float32)
        for s in ([seeds] if one else seeds)
    ]).to(mean.device)
    # contiguous: the VAE's mean/std are strided views, and `randn_like` on a strided tensor draws the noise in
    # another order; the cached and live paths must hand the step the same layout.
    latents = ((mean.float() + std.float() * eps - shift) * scale).contiguous()
    return latents[0] if one else latents


class TextCache(_Store):
    def __init__(self, identity: str, to_disk: bool, cache_dir: str | None):
        super().__init__(to_disk, cache_dir)
        self.identity = identity

    def key(self, caption: str) -> str:
        return _digest("te", caption, self.identity)

    def outputs_for(self, dataset, item_index: int, caption: str):
        try:
            entry = self.get(self.key(caption), dataset.items[item_index])
        except (KeyError, OSError):
            raise DataError(f"no cached text-encoder output for the caption {caption!r}; the cache was not filled, or "
                            "the caption changed after caching") from None
        return entry["prompt_embeds"], entry.get("pooled")


def vae_scaling(vae) -> tuple[float, float]:
    return float(vae.config.scaling_factor), float(getattr(vae.config, "shift_factor", None) or 0.0)


def fill_latent_cache(dataset, d, ctx: CacheContext) -> LatentCache:
    """Encode what is missing, bucket by bucket, `ctx.vae_batch_size` images per VAE call."""
    scale, shift = vae_scaling(ctx.vae)
    cache = LatentCache(module_identity(ctx.vae), scale, shift, d.cache_latents_to_disk, d.cache_dir)
    jobs: dict[str, tuple[int, bool]] = {}
    for i in sorted(set(dataset.index)):
        for flip in ((False, True) if dataset.subset_of(i).random_flip else (False,)):
            jobs.setdefault(cache.key(dataset, i, flip), (i, flip))
    missing: dict[tuple[int, int], list[tuple[str, int, bool]]] = {}
    for key, (i, flip) in jobs.items():
        if cache.has(key, dataset.items[i]):
            cache.hits += 1
        else:
            cache.misses += 1
            missing.setdefault(dataset.item_buckets[i], []).append((key, i, flip))
    n = 0
    for bucket, todo in sorted(missing.items()):
        for start in range(0, len(todo), ctx.vae_batch_size):
            chunk = todo[start : start + ctx.vae_batch_size]
            pixels = torch.stack([dataset.render(i, flip)[0] for _, i, flip in chunk])
            with torch.no_grad():
                dist = ctx.vae.encode(pixels.to(ctx.device, dtype=ctx.vae_dtype)).latent_dist
            for j, (key, i, flip) in enumerate(chunk):
                meta = {"source": str(dataset.items[i].path.name), "bucket": f"{bucket[0]}x{bucket[1]}",
                        "flip": str(int(flip)), "vae": cache.identity}
                cache.put(key, dataset.items[i], {"mean": dist.mean[j], "std": dist.std[j]}, meta)
            n += len(chunk)
    dataset.forget_decoded()
    log.info("latent cache: %d entries reused, %d encoded%s", cache.hits, n,
             f" (on disk, {cache.cache_dir or CACHE_FOLDER})" if cache.to_disk else " (in memory)")
    dataset.latent_cache = cache
    return cache


def fill_text_cache(dataset, d, ctx: CacheContext, batch_size: int = 8) -> TextCache:
    parts = [module_identity(te) for te in ctx.text_encoders]
    parts += [f"{type(t).__name__}:{len(t)}" for t in ctx.tokenizers]
    setting = f"{parts}|conditioning={ctx.family.text_conditioning}|clip_skip={ctx.clip_skip}"
    if ctx.max_token_length not in (None, 75):  # the 75-token identity stays what it was, so old caches are reused
        setting += f"|max_token_length={ctx.max_token_length}"
    if ctx.family.text_conditioning not in CHUNKED:  # FLUX: the T5 length (`model.max_sequence_length`)
        setting += f"|sequence_lengths={[t.model_max_length for t in ctx.tokenizers]}"
    identity = hashlib.sha256(setting.encode()).hexdigest()[:24]
    cache = TextCache(identity, d.cache_text_encoder_outputs_to_disk, d.cache_dir)
    todo: dict[tuple[str, str], tuple[str, int]] = {}
    for i in sorted(set(dataset.index)):
        caption = dataset.static_caption(i)
        key = cache.key(caption)
        where = str(cache.folder(dataset.items[i]))
        if (key, where) in todo:
            continue
        if cache.has(key, dataset.items[i]):
            cache.hits += 1
            todo[(key, where)] = ("", -1)
        else:
            cache.misses += 1
            todo[(key, where)] = (caption, i)
    jobs = [(k, c, i) for (k, _), (c, i) in todo.items() if i >= 0]
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        with torch.no_grad():
            cond = encode_prompts(ctx.family, ctx.tokenizers, ctx.text_encoders, [c for _, c, _ in chunk],
                                  ctx.clip_skip, ctx.max_token_length)
        for j, (key, caption, i) in enumerate(chunk):
            tensors = {"prompt_embeds": cond.prompt_embeds[j]}
            if cond.pooled is not None:
                tensors["pooled"] = cond.pooled[j]
            cache.put(key, dataset.items[i], tensors, {"caption": caption[:200], "te": identity})
    log.info("text-encoder cache: %d captions reused, %d encoded", cache.hits, len(jobs))
    dataset.text_cache = cache
    return cache
