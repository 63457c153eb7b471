"""Run one corpus case through the real command line, in this process, and judge the outcome.

A case is a command (`loraforge.cli.main(argv)`) on inputs its builder writes into the case's own folder. The run
records the exit code, stdout and stderr (an exception escaping `main` is printed with its traceback and exit code
1, as `python -m loraforge` does), and a hash of every file of the folder before and after. The outcome is one of:

- `clear`: the exit code expected, every expected piece of the message (the file, the field or option, the fix) in
  stderr (in stdout or stderr for a command expected to succeed), no traceback (one is expected with `--debug`), no
  file there before changed or removed, and nothing left behind by a command that failed;
- `traceback`: a traceback without `--debug`;
- `silent`: exit code 0 where a failure was expected, or a success without the note that says what went wrong
  (a skipped file, a cut caption);
- `lost`: a file that was there before is changed or gone (a finished run, an existing output without --overwrite);
- `leftover`: a command that failed left a new file behind (half an output, a temporary);
- `vague`: the right kind of failure, but the exit code or the message is not the one expected.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# the classes of issue 11 (items 1-6) and the corpus's own
CLASSES = {
    "nonfinite": "1. NaN / Inf in a run or a file",
    "run-folder": "2. run folder ownership and resume",
    "preflight": "3. found before the first step (and by --dry-run)",
    "data": "4. silently wrong data",
    "no-file": "5. errors that named no file (tools, model paths, options)",
    "faults": "6. faults around a run (partial checkpoints, files that cannot be written)",
    "config": "more: config files and values",
    "cli": "more: command-line arguments of every command",
}
OUTCOMES = ("clear", "traceback", "silent", "lost", "leftover", "vague")


@dataclass(frozen=True)
class Case:
    """One bad input. `argv(folder, inputs)` writes the case's inputs into its folder and returns the command line
    (without `loraforge`). `file`, `field` and `fix` are the pieces the message must hold (None where the case has
    no such piece: an option has no file); `also` more pieces, `forbid` pieces it must not hold (the good file of
    two). `rc` is the expected exit code; `debug` runs with --debug and expects the traceback; `new_ok` are globs
    (relative to the case folder) of files a failing command may leave (its log); `xfail` says why the product
    does not pass the case yet."""

    id: str
    cls: str
    argv: Callable[[Path, object], list[str]]
    rc: int = 2
    file: str | None = None
    field: str | None = None
    fix: str | None = None
    also: tuple[str, ...] = ()
    forbid: tuple[str, ...] = ()
    debug: bool = False
    new_ok: tuple[str, ...] = ()
    xfail: str | None = None

    def expected(self) -> list[str]:
        return [s for s in (self.file, self.field, self.fix, *self.also) if s]


@dataclass
class Result:
    case: Case
    argv: list[str]
    rc: int
    out: str
    err: str
    seconds: float
    changed: list[str] = field(default_factory=list)  # files there before, now different or gone
    new: list[str] = field(default_factory=list)  # files the command left (not allowed by new_ok)

    @property
    def text(self) -> str:
        """Where the message is looked for: stderr for an error (exit code 2), both streams for a success or a report
        (`check` exits 1 for a broken file and says why on stdout)."""
        return self.err if self.case.rc == 2 else self.out + self.err

    @property
    def missing(self) -> list[str]:
        return [s for s in self.case.expected() if s not in self.text]

    @property
    def present(self) -> list[str]:
        return [s for s in self.case.forbid if s in self.out + self.err]

    @property
    def outcome(self) -> str:
        tb = "Traceback (most recent call last)" in self.out + self.err
        if tb and not self.case.debug:
            return "traceback"
        if self.changed:
            return "lost"
        if self.case.rc != 0 and self.rc == 0:
            return "silent"
        if self.case.rc == 0 and self.rc == 0 and self.missing:
            return "silent"
        if self.new and self.case.rc != 0:
            return "leftover"
        if self.rc != self.case.rc or self.missing or self.present or (self.case.debug and not tb):
            return "vague"
        return "clear"

    def explain(self) -> str:
        return (f"{self.case.id}: {self.outcome} (exit {self.rc}, expected {self.case.rc})\n"
                f"  argv: {self.argv}\n  missing: {self.missing}  forbidden present: {self.present}\n"
                f"  changed or gone: {self.changed}\n  left behind: {self.new}\n"
                f"--- stderr ---\n{self.err[-2500:]}\n--- stdout ---\n{self.out[-1000:]}")


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative path → sha256; a folder as 'dir', a link as its target)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                found[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def case_folder(root: Path, case: Case) -> Path:
    return root / case.id.replace("/", "__").replace(" ", "_")


def run_case(case: Case, root: Path, inputs) -> Result:
    """Build the case's inputs in its own folder under `root` and run its command there (the working directory too,
    so an output that lands in the default place is seen as left behind)."""
    folder = case_folder(root, case)
    folder.mkdir(parents=True, exist_ok=False)
    argv = [str(a) for a in case.argv(folder, inputs)] + (["--debug"] if case.debug else [])
    before = snapshot(folder)
    from loraforge.cli import main

    logging.getLogger("loraforge").handlers.clear()  # the CLI binds its console handler to the current stderr
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    t0 = time.perf_counter()
    try:
        os.chdir(folder)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as e:  # argparse
                rc = e.code if isinstance(e.code, int) else 1
            except BaseException:  # what `python -m loraforge` would print
                traceback.print_exc()
                rc = 1
    finally:
        os.chdir(cwd)
    seconds = time.perf_counter() - t0
    after = snapshot(folder)
    changed = sorted(p for p, h in before.items() if after.get(p) != h)
    new = sorted(p for p in after if p not in before and after[p] != "dir"
                 and not any(fnmatch.fnmatch(p, g) for g in case.new_ok))
    return Result(case, argv, rc, out.getvalue(), err.getvalue(), seconds, changed, new)
