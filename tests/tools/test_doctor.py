"""`loraforge doctor` and the install lock it reports against."""

from __future__ import annotations

import importlib.metadata as md
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from loraforge.tools.doctor import KNOWN_BAD, diagnose, lock_differences, read_lock

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "src" / "loraforge" / "assets" / "lock.txt"


def _versions(**changes):
    base = {"torch": "2.13.0", "diffusers": "0.42.1", "transformers": "5.23.0", "peft": "0.21.2",
            "accelerate": "1.15.0", "lycoris-lora": "4.1.3", "torchvision": None}
    base.update({k.replace("_", "-"): v for k, v in changes.items()})
    return base


def test_transformers_524_with_old_peft_is_reported_with_the_fix(tmp_path):
    report = diagnose(_versions(transformers="5.24.0"), lock_text="", probe_imports=False, folders=[tmp_path])
    assert not report.ok
    [bad] = report.problems
    assert "peft" in bad.problem and "transformers<5.24" in bad.fix
    text = "\n".join(report.lines())
    assert "PROBLEM:" in text and "fix: pip install 'transformers<5.24'" in text
    # the same libraries a step earlier, or with a new enough peft, are fine
    assert diagnose(_versions(), lock_text="", probe_imports=False, folders=[tmp_path]).ok
    assert diagnose(_versions(transformers="5.24.0", peft="0.22.0"), lock_text="", probe_imports=False,
                    folders=[tmp_path]).ok


def test_torchvision_is_reported():
    report = diagnose(_versions(torchvision="0.29.1"), lock_text="", probe_imports=False, folders=[])
    assert any("torchvision" in b.problem and b.fix == "pip uninstall torchvision" for b in report.problems)


def test_differences_from_the_lock_are_listed():
    python, pins = read_lock("# python 3.11\ntransformers==5.23.0\npeft==0.21.2\nlycoris_lora==4.1.3\n")
    assert python == "3.11" and pins["lycoris-lora"] == "4.1.3"
    diff = lock_differences(_versions(transformers="5.24.0", lycoris_lora="4.1.2"), pins)
    assert diff == ["transformers 5.24.0 (tested 5.23.0)", "lycoris-lora 4.1.2 (tested 4.1.3)"]


def test_free_disk_is_measured_for_folders_that_do_not_exist_yet(tmp_path):
    report = diagnose(_versions(), lock_text="", probe_imports=False, folders=[tmp_path / "not" / "yet"])
    gib = report.disk[str(tmp_path / "not" / "yet")]
    assert gib == pytest.approx(shutil.disk_usage(tmp_path).free / 2**30, rel=0.05)


def test_the_shipped_lock_fits_pyproject_and_holds_no_known_bad_combination():
    """The lock the Makefile installs must satisfy the ranges users get from `pip install loraforge`."""
    python, pins = read_lock(LOCK.read_text())
    assert python == "%d.%d" % sys.version_info[:2], "the lock was made with another Python: refresh it (make lock)"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    checked = 0
    for req in reqs:
        if req.marker and not req.marker.evaluate():
            continue
        name = req.name.lower().replace("_", "-")
        if name == "torch":
            continue  # installed first, from TORCH=
        assert name in pins, f"{req.name} is a dependency but not in the lock"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), f"lock {name}=={pins[name]} ∉ {req}"
        checked += 1
    assert checked >= 15
    assert not [b for b in KNOWN_BAD if b.matches({**pins, "torchvision": None})]


def test_this_environment_is_the_locked_one():
    """`make test` runs in the locked environment (a failure here means the venv drifted: `make clean install`)."""
    _, pins = read_lock(LOCK.read_text())
    for name in ("diffusers", "transformers", "peft", "accelerate", "lycoris-lora"):
        assert md.version(name) == pins[name]


def test_makefile_installs_with_the_lock_and_keeps_torch_selectable():
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    for installer in ("uv", "pip"):
        out = subprocess.run(["make", "-n", "-B", "install", f"INSTALLER={installer}", "TORCH=torch==9.9"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
        assert "pip install -q torch==9.9" in out
        [line] = [ln for ln in out.splitlines() if "-e '.[test]'" in ln]
        assert "-c src/loraforge/assets/lock.txt" in line and (installer == "uv") == ("uv pip install" in line)


def test_cli_doctor_json():
    run = subprocess.run([sys.executable, "-m", "loraforge", "doctor", "--json"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert report["ok"] and not report["problems"] and not report["import_errors"]
    for name in ("torch", "diffusers", "transformers", "peft", "accelerate", "lycoris-lora"):
        assert report["versions"][name] == md.version(name)
    import torch

    if torch.cuda.is_available():
        assert report["devices"][0].startswith("cuda:0 ")
    else:
        assert report["devices"] == []
    assert all(gib > 0 for gib in report["free_disk_gib"].values())
