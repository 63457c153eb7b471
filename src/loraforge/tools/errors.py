"""User errors of the LoRA tools and of the LoRA-file reader (defined with the others in `loraforge.errors`)."""

from ..errors import (
    FamilyMismatchError,
    MissingKeyError,
    NonFiniteTensorError,
    PickleRefusedError,
    ShapeMismatchError,
    ToolError,
    UnsupportedError,
)

__all__ = ["FamilyMismatchError", "MissingKeyError", "NonFiniteTensorError", "PickleRefusedError",
           "ShapeMismatchError", "ToolError", "UnsupportedError"]
