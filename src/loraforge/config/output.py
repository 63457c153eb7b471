"""`[output]`: where and how results are written."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .base import Section


class OutputConfig(Section):
    output_dir: str = Field("output", description="Parent folder of runs.")
    output_name: str = Field(
        "lora",
        description="Run name: files go to `output_dir/output_name/` and the kohya file is `<output_name>.safetensors`.",
    )
    save_precision: Literal["fp32", "fp16", "bf16"] = Field(
        "fp32", description="dtype of the saved LoRA tensors (`fp16` halves the size)."
    )
    write_diffusers: bool = Field(True, description="Write `pytorch_lora_weights.safetensors` (diffusers/PEFT layout).")
    write_kohya: bool = Field(
        True, description="Write `<output_name>.safetensors` (kohya layout for AUTOMATIC1111 and ComfyUI)."
    )
    log_with: Literal["tensorboard", "wandb", "none"] = Field(
        "tensorboard",
        description=(
            "Log loss and learning rates to TensorBoard (files under `logging_dir`) or to Weights & Biases "
            "(`wandb`: the optional extra, `pip install 'loraforge[wandb]'`, then `wandb login`; project "
            "`loraforge`, run named after `output_name`)."
        ),
    )
    logging_dir: str | None = Field(
        None, description="Folder of the logs (kohya's `--logging_dir`). Unset: `<run folder>/logs`."
    )
    log_prefix: str | None = Field(
        None,
        description=(
            "kohya's `--log_prefix`: each run logs into a new `<log_prefix><YYYYmmddHHMMSS>` subfolder of "
            "`logging_dir` (the wandb run's name too). Unset: the subfolder `loraforge`, which a resumed run "
            "continues."
        ),
    )
    overwrite: bool = Field(
        False,
        description=(
            "Start a new run in a run folder that holds a finished run (its files are replaced) or another run's "
            "checkpoints (they are deleted first). Ignored when `training.resume` is set."
        ),
    )

    @field_validator("output_name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        """A folder name inside output_dir: `a/b` or `..` would put the run (and its files) somewhere else."""
        if not value.strip() or value in (".", "..") or "/" in value or "\\" in value:
            raise ValueError("the run's folder name inside output.output_dir: give a plain name such as 'my-lora' "
                             "(no '/', '\\', '.' or '..'; put folders in output.output_dir)")
        return value
