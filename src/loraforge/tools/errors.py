"""User errors of the LoRA tools and of the LoRA-file reader. The CLI prints them without a traceback
(`loraforge.cli.commands.user_errors`)."""

from __future__ import annotations


class ToolError(Exception):
    """A problem with the user's inputs or options; the message says what to do."""


class FamilyMismatchError(ToolError):
    """A file made for one base-model family (SD 1.x, SD 2.x, SDXL) used with another."""


class MissingKeyError(ToolError):
    """A key or module one input needs and the other lacks (or a file key that reaches no module of the model)."""


class ShapeMismatchError(ToolError):
    """A tensor whose shape does not fit the weight it belongs to."""


class PickleRefusedError(ToolError):
    """A pickle-based file (.bin/.pkl/.pt/.ckpt/.pth) read without --allow-pickle."""


class UnsupportedError(ToolError):
    """An adapter kind or a file layout the requested operation cannot handle."""
