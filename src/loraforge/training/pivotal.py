"""Pivotal tuning: new tokens learnt by textual inversion, together with the LoRA (cog-sdxl, diffusers' advanced
scripts).

Every occurrence of the token abstraction (`TOK`) in captions and prompts becomes the new tokens (`<s0><s1>`), which
are added to every tokenizer of the family. Their embedding rows live in a small trainable parameter spliced after
the frozen embedding table (`ExtendedEmbedding`), so only the new rows have gradients and optimizer state and every
old row stays bit-identical — unlike the diffusers script, which trains the whole vocabulary matrix and copies the
old rows back after each step. They train for `train_text_encoder_ti_frac` of the steps, then freeze.

Phased (`training.ti_steps`, cloneofsimo's lora_pti): the first N steps train only the embeddings (the network's
gradients are dropped before each optimizer step, so its weights and optimizer state do not move), then the
embeddings freeze and only the network trains. With `network.algo = "none"` (textual inversion alone) the embeddings
train for the whole run.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..errors import DataError, RunFolderError, TrainingError
from ..formats.embeddings import embeddings_file_name

log = logging.getLogger(__name__)


class ExtendedEmbedding(torch.nn.Module):
    """A token-embedding table = the frozen original rows followed by trainable new rows."""

    def __init__(self, base: torch.nn.Embedding, new_rows: torch.Tensor):
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.new = torch.nn.Parameter(new_rows.detach().to(torch.float32).clone())
        self.num_embeddings = base.num_embeddings + new_rows.shape[0]
        self.embedding_dim = base.embedding_dim

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.base.weight, self.new.to(self.base.weight.dtype)], dim=0)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)


def _embeddings_module(text_encoder):
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.embeddings


def phases_text(cfg, max_steps: int, warmup: int = 0) -> str | None:
    """The run plan's line on the new tokens and when they and the network train (None without pivotal tuning)."""
    t, o = cfg.training, cfg.optimizer
    if not t.train_text_encoder_ti:
        return None
    pivotal = PivotalTuning(t)
    tokens = ", ".join(f"{a} → {toks}" for a, toks in pivotal.replacements.items())
    emb_lr = o.embedding_lr or o.text_encoder_lr or o.learning_rate
    net = cfg.network
    if net.algo == "none":
        return (f"textual inversion alone: new tokens {tokens} train all {max_steps} steps at lr {emb_lr:g}; "
                "no LoRA (only the embeddings file is written)")
    lora = "UNet" + (" + text encoder(s)" if net.train_text_encoder else "") + f" {net.algo}"
    if t.ti_steps is None:
        pivot = int(round(t.train_text_encoder_ti_frac * max_steps))
        return (f"pivotal tuning: new tokens {tokens}; steps 1-{pivot}: embeddings (lr {emb_lr:g}) and {lora} "
                f"together, steps {pivot + 1}-{max_steps}: {lora} alone")
    te_lr = o.text_encoder_lr or o.learning_rate
    lrs = f"lr {o.unet_lr or o.learning_rate:g}" + (f", text encoders {te_lr:g}" if net.train_text_encoder else "")
    note = (f" (the schedule's warm-up, {warmup} steps, is at its start, in the embeddings phase)"
            if warmup and o.lr_scheduler not in ("constant", "adafactor") else "")
    return (f"phases: steps 1-{t.ti_steps}: new token embeddings alone ({tokens}, lr {emb_lr:g}); steps "
            f"{t.ti_steps + 1}-{max_steps}: {lora} alone ({lrs}), embeddings frozen; one {o.lr_scheduler} schedule "
            f"over both{note}")


class PivotalTuning:
    def __init__(self, training_cfg):
        self.cfg = training_cfg
        n = training_cfg.tokens_per_abstraction
        names = training_cfg.token_names
        self.tokens: list[str] = []
        self.replacements: dict[str, str] = {}
        for a in training_cfg.token_abstractions:
            k = len(self.tokens)
            new = names[k:k + n] if names else [f"<s{k + j}>" for j in range(n)]
            self.tokens += new
            self.replacements[a] = "".join(new)
        self.layers: list[ExtendedEmbedding] = []
        self.token_ids: list[list[int]] = []
        self.frozen = False
        self.phased = training_cfg.ti_steps is not None
        self.alone = False  # textual inversion alone (no network): set by `apply`

    # ------------------------------------------------------------------------------------------------ setup
    def check_captions(self, items) -> None:
        """Refuse a dataset whose captions never mention a token abstraction: the new tokens would learn nothing."""
        if not any(a in item.caption for item in items for a in self.replacements):
            raise DataError(
                f"training.train_text_encoder_ti is on, but no caption contains the token abstraction "
                f"{self.cfg.token_abstraction!r}, so the new tokens would learn nothing; write it where the "
                f"subject's name goes (dataset.instance_prompt = 'a photo of {self.cfg.token_abstraction} "
                "dog', and in caption files) or set training.token_abstraction to the word your captions use"
            )

    def apply(self, model, generator: torch.Generator | None = None, network=None) -> None:
        """Add the tokens to every tokenizer and splice trainable rows into every text encoder. `network` (the
        trained network, none for textual inversion alone) trains in the LoRA phase."""
        self.alone = network is None or not network.parts
        for tok, te in zip(model.tokenizers, model.text_encoders):
            self._check_new(tok)
            tok.add_tokens(self.tokens)
            ids = tok.convert_tokens_to_ids(self.tokens)
            emb = _embeddings_module(te)
            base = emb.token_embedding
            if ids != list(range(base.num_embeddings, base.num_embeddings + len(self.tokens))):
                raise ValueError(f"new token ids {ids} do not follow the embedding table ({base.num_embeddings} rows)")
            rows = self._initial_rows(tok, base, generator)
            layer = ExtendedEmbedding(base, rows).to(base.weight.device)
            emb.token_embedding = layer
            self.layers.append(layer)
            self.token_ids.append(ids)
        log.info("pivotal tuning: %s → %s in %d text encoder(s)", ", ".join(self.replacements),
                 ", ".join(self.replacements.values()), len(self.layers))

    def _check_new(self, tokenizer) -> None:
        """Refuse a token the tokenizer knows already, as a vocabulary entry or as one word-token (`sks` is CLIP's
        `sks</w>`): training it would change that word wherever it is written."""
        vocab = tokenizer.get_vocab()
        known = []
        for t in self.tokens:
            ids = tokenizer(t, add_special_tokens=False).input_ids
            if t in vocab or len(ids) == 1:
                known.append(f"{t!r} (token {vocab.get(t, ids[0] if ids else None)})")
        if not known:
            return
        if self.cfg.token_names:
            raise TrainingError(
                f"training.token_names: {', '.join(known)} already mean something to the tokenizer; new tokens must "
                "be new to it: pick names it does not know, e.g. with angle brackets ('<krk>')"
            )
        raise TrainingError(f"the new tokens {', '.join(known)} already exist in the tokenizer; pick another "
                            "training.token_abstraction or set training.token_names")

    def _initial_rows(self, tokenizer, base: torch.nn.Embedding, generator) -> torch.Tensor:
        n, dim = len(self.tokens), base.embedding_dim
        table = base.weight.detach().float()
        word = self.cfg.initializer_token
        if word:
            ids = tokenizer(word, add_special_tokens=False).input_ids
            if not ids:
                raise TrainingError(f"training.initializer_token = {word!r} tokenizes to nothing; pick a word")
            return table[ids].mean(0, keepdim=True).expand(n, dim).cpu().clone()
        std = table.std().item()
        return torch.randn((n, dim), generator=generator) * std

    # ------------------------------------------------------------------------------------------------ training
    def parameters(self) -> list[torch.nn.Parameter]:
        return [layer.new for layer in self.layers]

    def a1111_names(self, output_name: str) -> dict[str, str]:
        """abstraction -> the trigger A1111 uses for the run's embeddings file (`<output_name>_emb.safetensors`:
        its file name; the file holds every new token's vector)."""
        return dict.fromkeys(self.replacements, embeddings_file_name(output_name).removesuffix(".safetensors"))

    def replace(self, text: str) -> str:
        for a, toks in self.replacements.items():
            text = text.replace(a, toks)
        return text

    def pivot_step(self, max_steps: int) -> int:
        """The step at which the embeddings freeze: `ti_steps`, else `train_text_encoder_ti_frac` of the run; never
        when they train alone."""
        if self.alone:
            return max_steps
        if self.phased:
            return self.cfg.ti_steps
        return int(round(self.cfg.train_text_encoder_ti_frac * max_steps))

    @property
    def network_waits(self) -> bool:
        """Phased: the network does not train yet (the embeddings' phase)."""
        return self.phased and self.training

    def step_parameters(self, network_params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
        """The parameters this step trains, of the network's and the embeddings."""
        return ([] if self.network_waits else list(network_params)) + (self.parameters() if self.training else [])

    def hold_network(self, network_params: list[torch.nn.Parameter]) -> None:
        """In the embeddings' phase, drop the network's gradients (after the backward pass, before the optimizer
        step): AdamW and the others skip a parameter without a gradient, weight decay included. The gradients are
        computed and all-reduced as usual, so several processes stay in step."""
        if self.network_waits:
            for p in network_params:
                p.grad = None

    def freeze(self) -> None:
        """Stop training the embeddings (the 'pivot'); the LoRA goes on."""
        for p in self.parameters():
            p.requires_grad_(False)
            p.grad = None
        self.frozen = True

    @property
    def training(self) -> bool:
        return bool(self.layers) and not self.frozen

    # ------------------------------------------------------------------------------------------------ state
    def vectors(self) -> list[torch.Tensor]:
        """New rows per text encoder, in token order (for the embeddings file)."""
        return [layer.new.detach().float().cpu().clone() for layer in self.layers]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"embeddings.{i}": v for i, v in enumerate(self.vectors())}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        for i, layer in enumerate(self.layers):
            value = sd[f"embeddings.{i}"]
            if value.shape != layer.new.shape:
                raise RunFolderError(
                    f"the checkpoint's new token embeddings {i} have shape {tuple(value.shape)}, this run's "
                    f"{tuple(layer.new.shape)}: resume with the training.num_new_tokens_per_abstraction and model "
                    "of the run that wrote it"
                )
            with torch.no_grad():
                layer.new.copy_(value)
