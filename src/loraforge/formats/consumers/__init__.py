"""Clean-room models of how the Stable Diffusion LoRA consumers read a file.

* `comfyui`: ComfyUI v0.19.3 (key map, adapter loading, merge math incl. its output-axis DoRA bug);
* `a1111`: AUTOMATIC1111 stable-diffusion-webui v1.10.1 Lora extension (layer names, name conversion, first-dot
  split, module types, merge math incl. input-axis-only DoRA);
* `diffusers_rules`: diffusers 0.42.1 `load_lora_weights`, replayed through diffusers' own conversion code;
* `tables`: full-size weight names/shapes of SD 1.5, SD 2.1 and SDXL base, derived on the meta device;
* `keys`: consumer-neutral key splitting and adapter classification.

The models were written from the behaviour documented in `shared/reference/formats.md`; no ComfyUI (GPL-3.0) or
A1111 (AGPL-3.0) code is included. `loraforge.formats.check` combines them into one report.
"""

from .keys import ConsumerMergeError

__all__ = ["ConsumerMergeError"]
