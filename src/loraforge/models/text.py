"""Prompt → conditioning, exactly as the diffusers pipelines compute it at inference time.

We encode ourselves (instead of calling `pipeline.encode_prompt`) so that the text encoders can be the modules that
accelerate wrapped for training, with gradients when a text-encoder LoRA or new embeddings are trained. A test
checks that the result equals the pipelines' `encode_prompt` bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..families import Family


@dataclass
class Conditioning:
    prompt_embeds: torch.Tensor  # [B, 77, D]
    pooled: torch.Tensor | None = None  # [B, P] for SDXL


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def _final_layer_norm(text_encoder):
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.final_layer_norm


def _clip_last(text_encoders: list, input_ids: list[torch.Tensor], clip_skip: int | None) -> Conditioning:
    te = text_encoders[0]
    if clip_skip is None:
        return Conditioning(te(input_ids[0])[0])
    out = te(input_ids[0], output_hidden_states=True)
    return Conditioning(_final_layer_norm(te)(out.hidden_states[-(clip_skip + 1)]))


def _clip_penultimate_pooled(text_encoders: list, input_ids: list[torch.Tensor], clip_skip: int | None) -> Conditioning:
    embeds, pooled = [], None
    for te, ids in zip(text_encoders, input_ids):
        out = te(ids, output_hidden_states=True)
        if pooled is None and out[0].ndim == 2:  # the projection model returns text_embeds first
            pooled = out[0]
        # SDXL always conditions on the penultimate layer; clip_skip counts from there.
        embeds.append(out.hidden_states[-2 if clip_skip is None else -(clip_skip + 2)])
    return Conditioning(torch.cat(embeds, dim=-1), pooled)


ENCODERS = {"clip-last": _clip_last, "clip-penultimate-pooled": _clip_penultimate_pooled}  # Family.text_conditioning


def encode_tokens(
    family: Family, text_encoders: list, input_ids: list[torch.Tensor], clip_skip: int | None = None
) -> Conditioning:
    """`input_ids[i]` are the tokens of `text_encoders[i]` (already on the encoder's device), conditioned the way
    `family` conditions its UNet."""
    return ENCODERS[family.text_conditioning](text_encoders, input_ids, clip_skip)


def encode_prompts(
    family: Family, tokenizers: list, text_encoders: list, captions: list[str], clip_skip: int | None = None
) -> Conditioning:
    ids = [tokenize(tok, captions).to(te.device) for tok, te in zip(tokenizers, text_encoders)]
    return encode_tokens(family, text_encoders, ids, clip_skip)


def sdxl_time_ids(
    original_sizes: list[tuple[int, int]], crops_top_left: list[tuple[int, int]], target_size: tuple[int, int]
) -> torch.Tensor:
    """SDXL micro-conditioning: (orig_h, orig_w, crop_top, crop_left, target_h, target_w) per image."""
    rows = [list(o) + list(c) + list(target_size) for o, c in zip(original_sizes, crops_top_left)]
    return torch.tensor(rows, dtype=torch.float32)
