"""When the text-encoder LoRA trains (`training.stop_text_encoder_training`, `train_text_encoder_frac`,
`alternate_text_encoder_unet_every`): the seed guides train the text encoder for the first part of a run only, since
it overfits sooner than the UNet; alternating phases train one of the two at a time.

A part that does not train in a step has its gradients dropped after the backward pass (as pivotal tuning's
embeddings phase drops the network's), so the optimizer leaves its weights and their state alone, weight decay
included, while the other part goes on; several processes stay in step because the gradients are still computed and
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


class TextEncoderSchedule:
    def __init__(self, te_params: list[torch.nn.Parameter], unet_params: list[torch.nn.Parameter],
                 stop_at: int | None, alternate_every: int | None = None):
        self.te_params, self.unet_params = list(te_params), list(unet_params)
        self.te_ids, self.unet_ids = {id(p) for p in self.te_params}, {id(p) for p in self.unet_params}
        self.stop_at, self.alternate_every = stop_at, alternate_every
        self.said = False

    @classmethod
    def from_config(cls, training, network, max_steps: int) -> "TextEncoderSchedule | None":
        stop_at = te_stop_step(training, max_steps)
        alternate = training.alternate_text_encoder_unet_every
        te_parts = [part for part in network.parts if part.startswith("te")]
        if (stop_at is None and not alternate) or not te_parts:
            return None
        te = [p for part in te_parts for p in network.parameters(part)]
        unet = [p for part in network.parts if not part.startswith("te") for p in network.parameters(part)]
        return cls(te, unet, stop_at, alternate)

    def stopped(self, global_step: int) -> bool:
        """The step after `global_step` no longer trains the text-encoder LoRA (it has stopped for good)."""
        return self.stop_at is not None and global_step >= self.stop_at

    def idle(self, global_step: int) -> str | None:
        """The part that does not train in the step after `global_step`: "te", "unet" or None."""
        if self.stopped(global_step):
            return "te"
        if self.alternate_every:  # phases of N steps: text encoder first, then UNet, and so on
            return "unet" if (global_step // self.alternate_every) % 2 == 0 else "te"
        return None

    def hold(self, global_step: int) -> None:
        """After the backward pass of the step after `global_step`: drop the idle part's gradients."""
        idle = self.idle(global_step)
        if idle is None:
            return
        if self.stopped(global_step) and not self.said:
            log.info("step %d: the text-encoder LoRA stops training (training.stop_text_encoder_training / "
                     "train_text_encoder_frac); the UNet LoRA goes on", global_step)
            self.said = True
        for p in self.te_params if idle == "te" else self.unet_params:
            p.grad = None

    def still_training(self, params: list[torch.nn.Parameter], global_step: int) -> list[torch.nn.Parameter]:
        """`params` less the idle part (for gradient clipping and the NaN check)."""
        idle = self.idle(global_step)
        if idle is None:
            return params
        drop = self.te_ids if idle == "te" else self.unet_ids
        return [p for p in params if id(p) not in drop]
