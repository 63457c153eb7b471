"""`loraforge doctor`: what this environment runs, and whether a known-bad combination of libraries is installed.

It reads installed versions from the package metadata (`importlib.metadata`), so a broken library is reported instead
of crashing the report; torch is imported only to ask about CUDA / MPS. The tested versions come from the lock the
Makefile installs (`loraforge/assets/lock.txt`, shipped in the package), so the report also says where this
environment differs from what the test suite passed with.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import platform
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

from ..utils.files import cache_home

# The libraries a training run touches, as the report lists them (distribution names).
LIBRARIES = ("torch", "diffusers", "transformers", "peft", "accelerate", "lycoris-lora", "safetensors",
             "huggingface-hub", "bitsandbytes", "prodigyopt", "pydantic", "numpy")

# Import names of the distributions whose import is probed (a version on disk is not a working library).
IMPORTS = {"torch": "torch", "diffusers": "diffusers", "transformers": "transformers", "peft": "peft",
           "accelerate": "accelerate", "lycoris-lora": "lycoris"}

LOCK_RESOURCE = "assets/lock.txt"


@dataclass(frozen=True)
class KnownBad:
    """A combination of installed versions that is known to break loraforge: all `when` requirements match."""

    when: tuple[str, ...]  # PEP 508 requirements, e.g. "transformers>=5.24"; a name alone means "installed"
    problem: str
    fix: str

    def matches(self, versions: dict[str, str | None]) -> bool:
        for text in self.when:
            req = Requirement(text)
            have = versions.get(req.name)
            if have is None:
                return False
            try:
                if req.specifier and not req.specifier.contains(Version(have), prereleases=True):
                    return False
            except InvalidVersion:
                return False
        return True


KNOWN_BAD: tuple[KnownBad, ...] = (
    KnownBad(
        ("transformers>=5.24", "peft<0.22"),
        "transformers 5.24+ refuses peft older than 0.22: text-encoder LoRA, merge, resize and sample fail with "
        "'The version of PEFT you are using is not compatible'",
        "pip install 'transformers<5.24'   (or `make install`, which installs the tested lock)",
    ),
    KnownBad(
        ("torchvision",),
        "torchvision is installed; a torchvision that does not match torch breaks transformers' imports, and "
        "loraforge does not use it",
        "pip uninstall torchvision",
    ),
)


@dataclass
class Report:
    python: str
    platform: str
    versions: dict[str, str | None]
    import_errors: dict[str, str] = field(default_factory=dict)
    devices: list[str] = field(default_factory=list)
    disk: dict[str, float] = field(default_factory=dict)  # folder -> free GiB
    problems: list[KnownBad] = field(default_factory=list)
    lock_differences: list[str] = field(default_factory=list)
    lock_python: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and not self.import_errors

    def lines(self) -> list[str]:
        out = [f"python     {self.python} ({self.platform})"]
        for name, v in self.versions.items():
            if name == "torchvision" and v is None:
                continue
            note = f"  IMPORT FAILS: {self.import_errors[name]}" if name in self.import_errors else ""
            out.append(f"{name:<16} {v or 'not installed'}{note}")
        out.append("devices    " + ("; ".join(self.devices) if self.devices else "CPU only"))
        for folder, gib in self.disk.items():
            out.append(f"free disk  {gib:.1f} GiB in {folder}")
        if self.lock_python and not self.python.startswith(self.lock_python + "."):
            out.append(f"note: the lock was tested on Python {self.lock_python}; this is Python {self.python}")
        if self.lock_differences:
            where = f" (tested on Python {self.lock_python})" if self.lock_python else ""
            out.append(f"differs from the tested lock{where}: " + ", ".join(self.lock_differences))
        elif self.lock_python:
            out.append(f"every library at its tested version (lock for Python {self.lock_python})")
        for bad in self.problems:
            out.append(f"PROBLEM: {bad.problem}")
            out.append(f"  fix: {bad.fix}")
        out.append("ok" if self.ok else "problems found (see above)")
        return out

    def to_dict(self) -> dict:
        return {
            "python": self.python, "platform": self.platform, "versions": self.versions,
            "import_errors": self.import_errors, "devices": self.devices, "free_disk_gib": self.disk,
            "lock_python": self.lock_python, "lock_differences": self.lock_differences,
            "problems": [{"problem": b.problem, "fix": b.fix} for b in self.problems], "ok": self.ok,
        }


def installed_versions(names=LIBRARIES + ("torchvision",)) -> dict[str, str | None]:
    out = {}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def read_lock(text: str | None = None) -> tuple[str | None, dict[str, str]]:
    """(Python version the lock was made with, {name: version}) from the shipped lock; ({}, None) if absent."""
    if text is None:
        try:
            text = resources.files("loraforge").joinpath(LOCK_RESOURCE).read_text(encoding="utf-8")
        except (FileNotFoundError, OSError):
            return None, {}
    python, pins = None, {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("# python "):
            python = line.split()[2]
        if not line or line.startswith("#"):
            continue
        name, _, version = line.partition("==")
        pins[_normalise(name)] = version.split(";")[0].strip()
    return python, pins


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


def lock_differences(versions: dict[str, str | None], pins: dict[str, str]) -> list[str]:
    out = []
    for name, have in versions.items():
        want = pins.get(_normalise(name))
        if want and have and have != want:
            out.append(f"{name} {have} (tested {want})")
    return out


def _devices() -> list[str]:
    try:
        import torch
    except Exception:  # noqa: BLE001 - reported as an import error already
        return []
    found = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            found.append(f"cuda:{i} {props.name} ({props.total_memory / 2**30:.0f} GiB, "
                         f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}, CUDA {torch.version.cuda})")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps (Apple GPU)")
    return found


def _free_disk(folders: list[Path]) -> dict[str, float]:
    out = {}
    for folder in folders:
        probe = folder
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        out[str(folder)] = shutil.disk_usage(probe).free / 2**30
    return out


def diagnose(versions: dict[str, str | None] | None = None, lock_text: str | None = None,
             probe_imports: bool = True, folders: list[Path] | None = None) -> Report:
    versions = installed_versions() if versions is None else versions
    errors = {}
    if probe_imports:
        for dist, module in IMPORTS.items():
            if versions.get(dist) is None:
                continue
            try:
                importlib.import_module(module)
            except Exception as e:  # noqa: BLE001 - any failure to import is what the report is for
                errors[dist] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    lock_python, pins = read_lock(lock_text)
    return Report(
        python=platform.python_version(),
        platform=f"{platform.system()} {platform.machine()}",
        versions=versions,
        import_errors=errors,
        devices=_devices() if probe_imports and "torch" not in errors else [],
        disk=_free_disk(folders if folders is not None else [cache_home(), Path(os.getcwd())]),
        problems=[bad for bad in KNOWN_BAD if bad.matches(versions)],
        lock_differences=lock_differences(versions, pins),
        lock_python=lock_python,
    )
