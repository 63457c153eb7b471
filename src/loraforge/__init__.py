"""loraforge: fine-tune Stable Diffusion (SD 1.5, SD 2.x, SDXL) with LoRA and its relatives."""

__version__ = "0.1.0"
