"""Sampling: images from a model with LoRA, during training and from the `sample` tool."""
