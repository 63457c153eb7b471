"""The one config object that flows from the CLI (or the UI) to the trainer."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import Section
from .dataset import DatasetConfig
from .model import ModelConfig
from .network import LoraNetwork, NetworkConfig, NetworkOptions, block_count_problem
from .optimizer import OptimizerConfig
from .output import OutputConfig
from .sampling import SamplingConfig
from .training import TrainingConfig
from .training_flow import objective_problem

DEFAULT_MAX_TRAIN_STEPS = 1000


class TrainConfig(Section):
    preset: Literal["face", "object", "style"] | None = Field(
        None,
        description=(
            "Fill defaults from a seed-guide recipe (`loraforge presets` prints them): `face`, `object`, `style`. "
            "Options written in the config or with --set win over the preset."
        ),
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="The base model.")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig, description="Images and captions.")
    network: NetworkConfig = Field(default_factory=LoraNetwork, description="The adapter.")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig, description="Optimizer and schedule.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="The training loop.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="Sample images.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Files written.")

    @model_validator(mode="after")
    def _check_combinations(self) -> "TrainConfig":
        net, tr, opt = self.network, self.training, self.optimizer
        problem = _pivotal_problem(net, tr)
        if problem:
            raise ValueError(problem)
        if opt.lr_scheduler == "adafactor" and not (opt.type == "adafactor" and opt.adafactor_relative_step):
            raise ValueError(
                "optimizer.lr_scheduler = 'adafactor' needs optimizer.type = 'adafactor' with "
                "optimizer.adafactor_relative_step = true; pick another schedule otherwise"
            )
        if opt.type == "adafactor" and opt.adafactor_relative_step and opt.lr_scheduler != "adafactor":
            raise ValueError(
                "optimizer.adafactor_relative_step = true computes the step size itself: set "
                "optimizer.lr_scheduler = 'adafactor' (or turn relative_step off to use a schedule)"
            )
        if opt.adafactor_warmup_init and not (opt.type == "adafactor" and opt.adafactor_relative_step):
            raise ValueError(
                "optimizer.adafactor_warmup_init = true works only with optimizer.type = 'adafactor' and "
                "optimizer.adafactor_relative_step = true (it warms up the relative step); remove it or turn both on"
            )
        te_stop = [f for f in ("stop_text_encoder_training", "train_text_encoder_frac",
                               "alternate_text_encoder_unet_every") if getattr(tr, f) is not None]
        if te_stop and not net.train_text_encoder:
            raise ValueError(f"training.{te_stop[0]} schedules the text-encoder LoRA, but network.train_text_encoder is "
                             "off (no text-encoder LoRA trains): turn it on, or remove the option (pivotal tuning's "
                             "embeddings stop with training.train_text_encoder_ti_frac)")
        d = self.dataset
        if tr.masked_loss and not (d.alpha_mask or d.mask_dir):
            raise ValueError("training.masked_loss needs masks: set dataset.alpha_mask = true (the images' alpha "
                             "channel) or dataset.mask_dir (a folder of masks with the images' file names)")
        if d.alpha_mask and d.mask_dir:
            raise ValueError("dataset.alpha_mask and dataset.mask_dir both give the masks: keep one")
        if (d.alpha_mask or d.mask_dir) and not tr.masked_loss:
            raise ValueError(f"dataset.{'alpha_mask' if d.alpha_mask else 'mask_dir'} gives masks, but "
                             "training.masked_loss is off: turn it on, or remove the masks option")
        if self.model.quantize_base != "none" and self.network.algo != "lora":
            raise ValueError(f"model.quantize_base = {self.model.quantize_base!r} works with network.algo = 'lora' "
                             f"only (peft's LoRA layers over torchao's quantized linear layers), not "
                             f"{self.network.algo!r}: set network.algo = 'lora', or model.quantize_base = 'none'")
        if self.model.prediction_type != "auto":
            problem = tr.prediction_problem(self.model.prediction_type)
            if problem:
                raise ValueError(problem)
        family = self.model.family
        if family != "auto" or self.uses_embedded_model:
            known = "sd15" if family == "auto" else family
            problem = block_count_problem(self.network, known) or objective_problem(self, known)
            if problem:
                raise ValueError(problem)
        return self

    @property
    def uses_embedded_model(self) -> bool:
        return self.model.pretrained_model_name_or_path is None


def _pivotal_problem(net, tr: TrainingConfig) -> str | None:
    """The error for a textual-inversion / pivotal-tuning combination that cannot run, else None."""
    ti = tr.train_text_encoder_ti
    if net.algo == "none" and not ti:
        return ("network.algo = 'none' trains no adapter, so nothing would train: set "
                "training.train_text_encoder_ti = true for textual inversion alone, or choose an algo such as 'lora'")
    needs_ti = [n for n in ("ti_steps", "token_names") if getattr(tr, n) is not None] + (
        ["train_t5_ti"] if tr.train_t5_ti else [])
    if needs_ti and not ti:
        return (f"training.{', training.'.join(needs_ti)} set, but training.train_text_encoder_ti is off: turn it on "
                "(new token embeddings) or remove them")
    if tr.ti_steps is not None:
        if net.algo == "none":
            return ("training.ti_steps splits the run into an embeddings phase and a LoRA phase, but network.algo = "
                    "'none' has no LoRA (the embeddings train all steps): remove ti_steps, or choose an algo")
        if "train_text_encoder_ti_frac" in tr.model_fields_set:
            return ("training.ti_steps and training.train_text_encoder_ti_frac both say when the embeddings stop "
                    "training: keep one (ti_steps: embeddings alone first, then the LoRA alone)")
        if tr.max_train_steps is not None and tr.ti_steps >= tr.max_train_steps:
            return (f"training.ti_steps = {tr.ti_steps} leaves no step of the {tr.max_train_steps} "
                    "(training.max_train_steps) for the LoRA: make ti_steps smaller or max_train_steps larger")
    elif net.train_text_encoder and ti:
        return ("network.train_text_encoder and training.train_text_encoder_ti train together only in phases: set "
                "training.ti_steps = N (the embeddings train alone for the first N steps, then the UNet and "
                "text-encoder LoRA), or turn one of them off")
    return None


# Each section's keys; `[network]` is a union of per-algo classes, listed together by `NetworkOptions`.
SECTIONS: dict[str, type[Section]] = {
    name: NetworkOptions if name == "network" else field.annotation  # type: ignore[misc]
    for name, field in TrainConfig.model_fields.items()
    if name != "preset"
}
