"""Every user error loraforge reports, in one hierarchy.

A `LoraforgeError` is a problem with the user's input or environment whose message names the file, the field and
the fix. The CLI catches the base class and prints the message without a traceback (`--debug` shows it); anything
else that escapes is a bug in loraforge and keeps its traceback. Each role has its subclass; the modules of that
role raise it (or a subclass of it) and nothing else for user errors.

This module is the bottom layer: it imports nothing from loraforge, so every layer may import it.
"""

from __future__ import annotations


class LoraforgeError(Exception):
    """A user error: `str(e)` says what is wrong and how to fix it; `problems` lists details, one per line."""

    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = list(problems or [])
        super().__init__(message)


class ConfigError(LoraforgeError):
    """A config file or an override is wrong: the message names the file, the field and the fix."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message, problems or [message])


class DataError(LoraforgeError):
    """The dataset cannot be used as configured; `problems` lists every problem with its path and the fix."""


class ModelLoadError(LoraforgeError):
    """The model named in `[model]` cannot be loaded; the message says why and what to pass instead."""


class NetworkError(LoraforgeError):
    """The adapter cannot be built as configured (targets that match nothing, a rank that does not fit...)."""


class TrainingError(LoraforgeError):
    """A run cannot start or go on (run folder, optimizer set-up, resume)."""


class RunFolderError(TrainingError):
    """The run folder holds another run, or a checkpoint that cannot be resumed."""


class SaveFailedError(RunFolderError):
    """A checkpoint or the final LoRA could not be written (a full disk, a folder that became read-only...): the
    message names the path, the cause, what to free or fix and how to resume; the last complete checkpoint is kept,
    and nothing partial is left (or it is removed at the next start)."""


class RunInterruptedError(TrainingError):
    """The run was stopped with Ctrl-C (SIGINT) after a checkpoint of its current step; exit code 130 (128 + SIGINT),
    as for any interrupted command."""

    exit_code = 130


class NonFiniteError(TrainingError):
    """The loss, the gradients or the trained weights became NaN or infinite; the message gives the step, the
    learning rate (or the tensors) and the usual fixes. No LoRA file with NaN/Inf values is ever written."""


class OptimizerSetupError(TrainingError):
    """The optimizer named in `[optimizer]` cannot be built (a missing package, options it does not take)."""


class SamplingError(LoraforgeError):
    """Sample images cannot be made as asked (prompt files, sizes)."""


class PromptFileError(SamplingError):
    """A prompt file (kohya's `--sample_prompts` syntax) cannot be read; the message names the file and line."""


class ToolError(LoraforgeError):
    """A problem with a tool's inputs or options; the message says what to do."""


class FamilyMismatchError(ToolError):
    """A file made for one base-model family (SD 1.x, SD 2.x, SDXL) used with another."""


class MissingKeyError(ToolError):
    """A key or module one input needs and the other lacks (or a file key that reaches no module of the model)."""


class ShapeMismatchError(ToolError):
    """A tensor whose shape does not fit the weight it belongs to."""


class PickleRefusedError(ToolError):
    """A pickle-based file (.bin/.pkl/.pt/.ckpt/.pth) read without --allow-pickle (or `allow_pickle = true`), or a
    model written as a pickle `.ckpt` without --write-ckpt."""


class UnsupportedError(ToolError):
    """An adapter kind or a file layout the requested operation cannot handle."""


class NonFiniteTensorError(ToolError):
    """A LoRA file holds NaN or infinite values (a diverged training run): applying it would turn every weight it
    touches into NaN. The message names the file and the tensors."""


class InputNotFoundError(LoraforgeError, FileNotFoundError):
    """A file or folder the user named does not exist (also a `FileNotFoundError`, for callers of the Python API)."""


class OutputExistsError(LoraforgeError, FileExistsError):
    """An output would replace an existing file without `--overwrite` (also a `FileExistsError`)."""


class OutputNotWritableError(LoraforgeError, PermissionError):
    """An output cannot be written where it was asked for (a read-only folder, or a file where a folder should be);
    also a `PermissionError`."""


class PathNotAllowedError(LoraforgeError, PermissionError):
    """The web UI was asked to read or write a path outside the folders it was started with (`loraforge ui
    --state-dir / --data-root`); the message names the path, the field and the allowed folders."""
