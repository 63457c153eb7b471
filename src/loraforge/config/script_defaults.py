"""Defaults of the peers' training scripts (kohya sd-scripts, diffusers' LoRA examples) where they differ from
loraforge's, and which scripts the importer knows: the flag table is `aliases`."""

from __future__ import annotations

# Defaults of the peers' scripts that differ from loraforge's: the importer writes them when the flag is absent, so
# the imported config trains as the command did. (Conditional ones are applied by the importer, e.g. the bucket
# limits only with --enable_bucket.)
KOHYA_DEFAULTS: dict[str, object] = {
    "network_dim": 4,
    "network_alpha": 1.0,
    "learning_rate": 2e-6,
    "max_train_steps": 1600,
    "caption_extension": ".caption",
}
_DREAMBOOTH = {"rank": 4, "lr_warmup_steps": 500, "checkpointing_steps": 500, "train_batch_size": 4,
               "num_train_epochs": 1, "validation_epochs": 50, "num_validation_images": 4}
_TEXT_TO_IMAGE = {"rank": 4, "lr_warmup_steps": 500, "checkpointing_steps": 500, "train_batch_size": 16,
                  "num_train_epochs": 100, "validation_epochs": 1, "num_validation_images": 4,
                  "caption_column": "text"}
DIFFUSERS_DEFAULTS: dict[str, dict[str, object]] = {
    "train_dreambooth_lora.py": {**_DREAMBOOTH, "learning_rate": 5e-4},
    "train_dreambooth_lora_sdxl.py": {**_DREAMBOOTH, "learning_rate": 1e-4, "text_encoder_lr": 5e-6,
                                      "adam_weight_decay": 1e-4, "adam_weight_decay_text_encoder": 1e-3},
    "train_dreambooth_lora_sdxl_advanced.py": {**_DREAMBOOTH, "learning_rate": 1e-4, "text_encoder_lr": 5e-6,
                                               "adam_weight_decay": 1e-4},
    "train_dreambooth_lora_sd15_advanced.py": {**_DREAMBOOTH, "learning_rate": 1e-4, "text_encoder_lr": 5e-6,
                                               "adam_weight_decay": 1e-4},
    "train_dreambooth_lora_flux.py": {**_DREAMBOOTH, "learning_rate": 1e-4, "text_encoder_lr": 5e-6,
                                      "adam_weight_decay": 1e-4},
    "train_dreambooth_lora_flux_advanced.py": {**_DREAMBOOTH, "learning_rate": 1e-4, "text_encoder_lr": 5e-6,
                                               "adam_weight_decay": 1e-4},
    "train_text_to_image_lora.py": dict(_TEXT_TO_IMAGE),
    "train_text_to_image_lora_sdxl.py": dict(_TEXT_TO_IMAGE),
}
KOHYA_SCRIPTS = {"train_network.py": "auto", "sdxl_train_network.py": "sdxl",
                 "flux_train_network.py": "flux"}  # script -> model.family
DIFFUSERS_SCRIPTS = {name: next((f for f in ("sdxl", "flux") if f in name), "auto") for name in DIFFUSERS_DEFAULTS}
