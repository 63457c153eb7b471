"""Pivotal tuning: new tokens learnt by textual inversion, together with the LoRA (cog-sdxl, diffusers' advanced
scripts).

Every occurrence of the token abstraction (`TOK`) in captions and prompts becomes the new tokens (`<s0><s1>`), which
are added to every tokenizer of the family (FLUX: CLIP-L's; T5's too with `training.train_t5_ti`, diffusers'
`--enable_t5_ti`, else T5 reads `<s0><s1>` as text, as in diffusers' advanced FLUX script). Their embedding rows live
in a small trainable parameter spliced into the frozen embedding table (`ExtendedEmbedding`), so only the new rows
have gradients and optimizer state and every old row stays bit-identical — unlike the diffusers script, which trains
the whole vocabulary matrix and copies the old rows back after each step. They train for
`train_text_encoder_ti_frac` of the steps, then freeze.

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
from ..formats.embeddings import embedding_keys, embeddings_file_name

log = logging.getLogger(__name__)


class ExtendedEmbedding(torch.nn.Module):
    """A token-embedding table = the frozen original rows with trainable new rows at `start`, `start + 1`, ...

    `start` is the tokenizer's length before the new tokens: the table's end for CLIP; inside the table for T5, whose
    table is padded past its tokenizer (32,128 rows for 32,100 tokens): the new rows then stand in for padding rows no
    token reaches, and the table grows only by the rows beyond its end."""

    def __init__(self, base: torch.nn.Embedding, new_rows: torch.Tensor, start: int | None = None):
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.new = torch.nn.Parameter(new_rows.detach().to(torch.float32).clone())
        self.start = base.num_embeddings if start is None else start
        if not 0 <= self.start <= base.num_embeddings:
            raise ValueError(f"new rows at {self.start}, past the table's end ({base.num_embeddings} rows)")
        self.num_embeddings = max(base.num_embeddings, self.start + new_rows.shape[0])
        self.embedding_dim = base.embedding_dim

    @property
    def weight(self) -> torch.Tensor:
        w = self.base.weight
        end = self.start + self.new.shape[0]
        return torch.cat([w[: self.start], self.new.to(w.dtype), w[end:]], dim=0)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)


def phases_text(cfg, max_steps: int, warmup: int = 0, family=None) -> str | None:
    """The run plan's line on the new tokens (and, for a `family` with optional encoders, which encoders get them)
    and when they and the network train (None without pivotal tuning)."""
    t, o = cfg.training, cfg.optimizer
    if not t.train_text_encoder_ti:
        return None
    pivotal = PivotalTuning(t)
    tokens = ", ".join(f"{a} → {toks}" for a, toks in pivotal.replacements.items()) + _encoders_text(t, family)
    emb_lr = o.embedding_lr or o.text_encoder_lr or o.learning_rate
    net = cfg.network
    if net.algo == "none":
        return (f"textual inversion alone: new tokens {tokens} train all {max_steps} steps at lr {emb_lr:g}; "
                "no LoRA (only the embeddings file is written)")
    denoiser = "transformer" if family is not None and family.denoiser == "transformer" else "UNet"
    lora = denoiser + (" + text encoder(s)" if net.train_text_encoder else "") + f" {net.algo}"
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


def _encoders_text(training_cfg, family) -> str:
    """Where the new tokens go, for a family where that is a choice (FLUX: T5 only with `training.train_t5_ti`)."""
    if family is None or not family.optional_ti_text_encoders:
        return ""
    given = [te.embedding_key for te in family.ti_text_encoders(training_cfg.train_t5_ti)]
    left = [te.embedding_key for te in family.text_encoders if te.embedding_key not in given]
    if not left:
        return f" (in {' and '.join(given)}: training.train_t5_ti)"
    return (f" (in {' and '.join(given)}; {' and '.join(left)} reads them as text, as in diffusers' advanced FLUX "
            "script: training.train_t5_ti gives it the tokens too)")


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
        self.optional = training_cfg.train_t5_ti  # FLUX: T5 gets the tokens too
        self.layers: list[ExtendedEmbedding] = []
        self.token_ids: list[list[int]] = []
        self.keys: tuple[str, ...] = ()  # the embeddings file's tensors, one per layer (set by `apply`)
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
        """Add the tokens to the tokenizers of the family's pivotal-tuning text encoders (`Family.ti_text_encoders`:
        every one; FLUX's T5 only with `training.train_t5_ti`) and splice trainable rows into their token embeddings.
        `network` (the trained network, none for textual inversion alone) trains in the LoRA phase."""
        self.alone = network is None or not network.parts
        fam = model.family
        chosen = fam.ti_text_encoders(self.optional)
        for part, tok, te in zip(fam.text_encoders, model.tokenizers, model.text_encoders):
            if part not in chosen:
                continue
            self._check_new(tok)
            start = len(tok)  # add_tokens numbers the new tokens from here
            tok.add_tokens(self.tokens)
            ids = tok.convert_tokens_to_ids(self.tokens)
            base = te.get_input_embeddings()  # CLIP: embeddings.token_embedding; T5: `shared` (= encoder.embed_tokens)
            if ids != list(range(start, start + len(self.tokens))) or start > base.num_embeddings:
                raise ValueError(f"new token ids {ids} do not follow the tokenizer's {start} tokens within the "
                                 f"embedding table ({base.num_embeddings} rows)")
            rows = self._initial_rows(tok, base, start, generator)
            layer = ExtendedEmbedding(base, rows, start).to(base.weight.device)
            te.set_input_embeddings(layer)
            self.layers.append(layer)
            self.token_ids.append(ids)
        self.keys = embedding_keys(fam.name, self.optional)
        log.info("pivotal tuning: %s → %s in %d text encoder(s) (%s)", ", ".join(self.replacements),
                 ", ".join(self.replacements.values()), len(self.layers), ", ".join(te.embedding_key for te in chosen))

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

    def _initial_rows(self, tokenizer, base: torch.nn.Embedding, start: int, generator) -> torch.Tensor:
        n, dim = len(self.tokens), base.embedding_dim
        table = base.weight.detach().float()[:start]  # the tokens' rows (T5's table has padding rows beyond)
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
        if len(sd) != len(self.layers):
            raise RunFolderError(
                f"the checkpoint holds new token embeddings of {len(sd)} text encoder(s), this run trains "
                f"{len(self.layers)} ({', '.join(self.keys)}): resume with the training.train_t5_ti of the run that "
                "wrote it"
            )
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
