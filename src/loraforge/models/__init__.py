"""Load and build Stable Diffusion families (SD 1.5, SD 2.x, SDXL)."""
