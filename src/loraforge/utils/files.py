"""Atomic writes: a crash or Ctrl-C never leaves a half-written output behind.

Everything is written to a temporary name in the destination folder, flushed, then renamed over the target
(`os.replace` is atomic on POSIX and Windows when both live on the same filesystem). Temporary names start with a dot
and hold `TEMP_MARK` (`.name.tmp-abc123.safetensors`), so `is_temporary` tells what a killed process left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import time
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
        raise UnsupportedError(f"{path}: not a readable .safetensors file ({e}); the file is damaged (cut short by a "
                               "download or a copy?) or is another kind of file: download or export it again") from None


TEMP_MARK = ".tmp-"  # in every temporary name made here: `.<target name>.tmp-<random><suffix>`


def is_temporary(name: str) -> bool:
    """A file or folder name made by `atomic_path` / `atomic_dir` (left behind only by a killed process)."""
    return name.startswith(".") and TEMP_MARK in name


def _pause_for_test(target: Path, tmp: Path) -> None:
    """Test hook for the kill test (tests/training/test_kill_resume.py): with LORAFORGE_TEST_PAUSE_AT set to a part
    of a target path, the first write of such a target stops here, its temporary written and not yet renamed, so the
    test can SIGKILL the process in the middle of a save. Unset (always, outside that test), it does nothing."""
    want = os.environ.get("LORAFORGE_TEST_PAUSE_AT")
    if want and want in target.as_posix():
        print(f"LORAFORGE_TEST_PAUSED {tmp}", file=sys.stderr, flush=True)
        time.sleep(600)


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
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}{TEMP_MARK}", suffix=suffix or "", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, _default_mode())
        _pause_for_test(target, tmp_path)
        os.replace(tmp_path, target)
    finally:
        with contextlib.suppress(OSError):  # a folder that became read-only: the next run start removes it
            tmp_path.unlink(missing_ok=True)


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
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}{TEMP_MARK}", dir=target.parent))
    os.chmod(tmp, _default_mode(0o777))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}{TEMP_MARK}old")
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


def remove_temporaries(folder: Path, older_than_s: float = 0.0) -> list[Path]:
    """Remove what interrupted atomic writes left anywhere under `folder` (see `is_temporary`); return the paths.
    `older_than_s` spares younger ones (in a folder another live process may be writing to, such as a shared cache)."""
    removed = []
    now = time.time()
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            path = Path(root) / name
            if is_temporary(name) and (not older_than_s or now - path.lstat().st_mtime > older_than_s):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
        dirs[:] = [d for d in dirs if not is_temporary(d)]
    return removed


def cache_home() -> Path:
    """Where loraforge keeps what it builds once (tiny models, config folders): `$LORAFORGE_HOME` or
    `~/.cache/loraforge`."""
    env = os.environ.get("LORAFORGE_HOME")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "loraforge"
    return base


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
