"""Atomic writes: a crash or Ctrl-C never leaves a half-written output behind.

Everything is written to a temporary name in the destination folder, flushed, then renamed over the target
(`os.replace` is atomic on POSIX and Windows when both live on the same filesystem).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import InputNotFoundError, UnsupportedError

# File types that hold pickles (unpickling can run code): read only with `allow_pickle`, and with torch's
# weights_only mode then.
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pkl", ".pt", ".pth")


def open_safetensors(path: str | Path):
    """`safetensors.safe_open(path)` (use it in a `with`), with a missing, truncated or foreign file reported as a
    `LoraforgeError` that names it."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise InputNotFoundError(f"{path}: no such file")
    try:
        return safe_open(str(path), framework="pt")
    except Exception as e:  # safetensors' own error for a header it cannot parse
        raise UnsupportedError(f"{path}: not a readable .safetensors file ({e})") from None


def _default_mode(base: int = 0o666) -> int:
    """The mode a plain `open()` would give (mkstemp makes files private)."""
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success it replaces `target`, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, _default_mode())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_safetensors_atomic(tensors: dict, target: str | Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(target, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to `target`; on success it replaces `target` as a whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    os.chmod(tmp, _default_mode(0o777))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def cache_home() -> Path:
    """Where loraforge keeps what it builds once (tiny models, config folders): `$LORAFORGE_HOME` or
    `~/.cache/loraforge`."""
    env = os.environ.get("LORAFORGE_HOME")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "loraforge"
    return base
