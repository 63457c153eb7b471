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
    prompt_embeds: torch.Tensor  # [B, 77, D]; [B, 2 + max_token_length, D] with chunked prompts; FLUX: T5 [B, L, D]
    pooled: torch.Tensor | None = None  # [B, P] for SDXL and FLUX (CLIP-L's pooled output)


def tokenize(tokenizer, captions: list[str], max_token_length: int | None = None) -> torch.Tensor:
    """Token ids [B, 77]. With a `max_token_length` beyond the encoder's window (kohya's 150 / 225), ids
    [B, chunks, 77] instead: see `chunk_ids`."""
    window = tokenizer.model_max_length
    length = window if max_token_length is None else max(window, max_token_length + 2)
    ids = tokenizer(captions, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
    return ids if length == window else chunk_ids(ids, window, tokenizer.eos_token_id, tokenizer.pad_token_id)


def chunk_ids(ids: torch.Tensor, window: int, eos: int, pad: int) -> torch.Tensor:
    """kohya's `get_input_ids`: ids [B, 2 + N·75] (start, N·75 tokens, end) → [B, N, 77], each chunk the start
    token, its 75 tokens and the last token of the whole sequence. For tokenizers that pad with another token than
    the end token, a chunk whose text ends inside it gets an end token, and an empty chunk starts with one."""
    body = window - 2
    chunks = []
    for start in range(1, ids.shape[1] - 1, body):
        chunk = torch.cat([ids[:, :1], ids[:, start:start + body], ids[:, -1:]], dim=1)
        cut = (chunk[:, -2] != eos) & (chunk[:, -2] != pad)
        chunk[:, -1] = torch.where(cut, torch.full_like(chunk[:, -1], eos), chunk[:, -1])
        empty = chunk[:, 1] == pad
        chunk[:, 1] = torch.where(empty, torch.full_like(chunk[:, 1], eos), chunk[:, 1])
        chunks.append(chunk)
    return torch.stack(chunks, dim=1)


def merge_chunks(states: torch.Tensor, chunks: int) -> torch.Tensor:
    """kohya's `get_hidden_states`: the states [B·N, 77, D] of N chunks per prompt → [B, 2 + N·75, D]: the first
    chunk's start token, the 75 inner tokens of every chunk, the last chunk's final token."""
    window = states.shape[1]
    states = states.reshape(-1, chunks * window, states.shape[-1])
    parts = [states[:, :1]] + [states[:, i:i + window - 2] for i in range(1, chunks * window, window)]
    return torch.cat(parts + [states[:, -1:]], dim=1)


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


def _clip_pooled_t5(text_encoders: list, input_ids: list[torch.Tensor], clip_skip: int | None) -> Conditioning:
    """FLUX: CLIP-L's pooled output (the vector) and T5's last hidden state (the sequence, as long as the T5 ids:
    `model.max_sequence_length`), as `FluxPipeline.encode_prompt` computes them (no attention mask)."""
    if clip_skip is not None:
        raise ValueError("clip_skip does not apply to FLUX's text conditioning")
    clip, t5 = text_encoders
    pooled = clip(input_ids[0], output_hidden_states=False).pooler_output
    return Conditioning(t5(input_ids[1], output_hidden_states=False)[0], pooled)


def text_ids(conditioning: Conditioning) -> torch.Tensor:
    """FLUX's text position ids [L, 3]: zeros (the text tokens have no position in RoPE's image grid), as
    `FluxPipeline.encode_prompt` makes them."""
    embeds = conditioning.prompt_embeds
    return torch.zeros(embeds.shape[1], 3, device=embeds.device, dtype=embeds.dtype)


CHUNKED = ("clip-last", "clip-penultimate-pooled")  # conditionings that read long prompts in 75-token chunks
ENCODERS = {  # Family.text_conditioning
    "clip-last": _clip_last,
    "clip-penultimate-pooled": _clip_penultimate_pooled,
    "clip-pooled-t5": _clip_pooled_t5,
}


def encode_tokens(
    family: Family, text_encoders: list, input_ids: list[torch.Tensor], clip_skip: int | None = None
) -> Conditioning:
    """`input_ids[i]` are the tokens of `text_encoders[i]` (already on the encoder's device), conditioned the way
    `family` conditions its UNet. Chunked ids ([B, N, 77], `tokenize` with a `max_token_length`) are encoded
    chunk by chunk and merged as kohya does; the pooled output is the first chunk's."""
    if input_ids[0].ndim == 2:
        return ENCODERS[family.text_conditioning](text_encoders, input_ids, clip_skip)
    chunks = input_ids[0].shape[1]
    flat = ENCODERS[family.text_conditioning](text_encoders, [ids.flatten(0, 1) for ids in input_ids], clip_skip)
    pooled = None if flat.pooled is None else flat.pooled[::chunks]
    return Conditioning(merge_chunks(flat.prompt_embeds, chunks), pooled)


def encode_prompts(
    family: Family,
    tokenizers: list,
    text_encoders: list,
    captions: list[str],
    clip_skip: int | None = None,
    max_token_length: int | None = None,
) -> Conditioning:
    """Conditioning of `captions`; `max_token_length` (kohya's 150 / 225) encodes longer prompts in 75-token
    chunks instead of cutting them at the encoder's 77-token window."""
    if family.text_conditioning not in CHUNKED:  # FLUX: T5 reads model.max_sequence_length tokens, no chunks
        max_token_length = None
    ids = [tokenize(tok, captions, max_token_length).to(te.device) for tok, te in zip(tokenizers, text_encoders)]
    return encode_tokens(family, text_encoders, ids, clip_skip)


def sdxl_time_ids(
    original_sizes: list[tuple[int, int]], crops_top_left: list[tuple[int, int]], target_size: tuple[int, int]
) -> torch.Tensor:
    """SDXL micro-conditioning: (orig_h, orig_w, crop_top, crop_left, target_h, target_w) per image."""
    rows = [list(o) + list(c) + list(target_size) for o, c in zip(original_sizes, crops_top_left)]
    return torch.tensor(rows, dtype=torch.float32)
