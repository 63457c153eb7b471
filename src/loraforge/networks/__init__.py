"""Adapters: LoRA and its relatives, each injected into the UNet and text encoders of an `SDModel`."""

from .base import ModuleTensors, Network
from .lora import create_network

__all__ = ["ModuleTensors", "Network", "create_network"]
