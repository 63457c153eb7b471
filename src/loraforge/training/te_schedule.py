"""When the text-encoder LoRA stops training (`training.stop_text_encoder_training`, `train_text_encoder_frac`): the
seed guides train the text encoder for the first part of a run only, since it overfits sooner than the UNet.

From the stop step on the text-encoder LoRA's gradients are dropped after each backward pass (as pivotal tuning's
embeddings phase drops the network's), so the optimizer leaves those weights and their state alone, weight decay
included, while the UNet LoRA goes on; several processes stay in step because the gradients are still computed and
all-reduced. The new token embeddings of pivotal tuning have their own stop (`train_text_encoder_ti_frac`,
`ti_steps`).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("loraforge.train")


def te_stop_step(training, max_steps: int) -> int | None:
    """The step after which the text-encoder LoRA is frozen; None when it trains the whole run."""
    if training.stop_text_encoder_training is not None:
        return training.stop_text_encoder_training
    if training.train_text_encoder_frac is not None:
        return int(round(training.train_text_encoder_frac * max_steps))
    return None


class TextEncoderStop:
    def __init__(self, params: list[torch.nn.Parameter], stop_at: int):
        self.params = list(params)
        self.ids = {id(p) for p in self.params}
        self.stop_at = stop_at
        self.said = False

    @classmethod
    def from_config(cls, training, network, max_steps: int) -> "TextEncoderStop | None":
        stop_at = te_stop_step(training, max_steps)
        parts = [part for part in network.parts if part.startswith("te")]
        if stop_at is None or not parts:
            return None
        return cls([p for part in parts for p in network.parameters(part)], stop_at)

    def stopped(self, global_step: int) -> bool:
        """The step after `global_step` does not train the text-encoder LoRA."""
        return global_step >= self.stop_at

    def hold(self, global_step: int) -> None:
        """After the backward pass of the step after `global_step`: drop the text-encoder LoRA's gradients once
        it has stopped."""
        if not self.stopped(global_step):
            return
        if not self.said:
            log.info("step %d: the text-encoder LoRA stops training (training.stop_text_encoder_training / "
                     "train_text_encoder_frac); the UNet LoRA goes on", global_step)
            self.said = True
        for p in self.params:
            p.grad = None

    def still_training(self, params: list[torch.nn.Parameter], global_step: int) -> list[torch.nn.Parameter]:
        """`params` less the text-encoder LoRA once it has stopped (for gradient clipping and the NaN check)."""
        if not self.stopped(global_step):
            return params
        return [p for p in params if id(p) not in self.ids]
