"""Shared fixtures: a hermetic cache folder (tiny models are built once per session), offline hub, and helpers
to make small training configs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="loraforge-test-home-"))
os.environ["LORAFORGE_HOME"] = str(_SESSION_HOME)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs 2 workers on 2 cores: one thread each
    os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


# The longest files start first: `make test`'s workers take whole files in collection order (--dist loadfile
# --no-loadscope-reorder), and the concept-learning file (four 300-step trainings, ~10 min on one worker) sent last
# (xdist's default order is by test count) kept the suite waiting on it
SLOWEST_FIRST = ("tests/tools/test_concept_learning.py", "tests/training/test_distributed.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: not item.nodeid.startswith(SLOWEST_FIRST))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def tiny_dirs() -> dict[str, Path]:
    """The embedded tiny SD 1.5, SD 2.x and SDXL diffusers folders, built once for the session."""
    import torch

    from loraforge.models.tiny import tiny_model_dir

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    # two pytest-xdist workers on the 2 cores: one thread each (tiny models gain little from a second thread)
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
    return {f: tiny_model_dir(f) for f in ("sd15", "sd2", "sdxl")}


@pytest.fixture
def make_config(tmp_path, tiny_dirs):
    """Build a small, fast `TrainConfig` on a tiny model: make_config("sdxl", **{"training.max_train_steps": 4})."""
    from loraforge.config import load_config

    def make(family: str = "sd15", **overrides):
        base = {
            "model.family": family,
            "output.output_dir": str(tmp_path / "out"),
            "output.output_name": f"run-{family}",
            "output.log_with": "none",
            "training.max_train_steps": 4,
            "network.rank": 4,
            "optimizer.learning_rate": 1e-3,
            "sampling.num_inference_steps": 2,
            "sampling.num_images_per_prompt": 1,
            "sampling.at_end": False,
        }
        base.update(overrides)  # a value of None leaves the option unset
        return load_config(None, [f"{k}={v!r}" if isinstance(v, str) else f"{k}={_toml(v)}"
                                  for k, v in base.items() if v is not None])

    return make


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(repr(v) if isinstance(v, str) else _toml(v) for v in value) + "]"
    return str(value)


@pytest.fixture(scope="session")
def tiny_models(tiny_dirs):
    """tiny_models("sdxl"): the loaded tiny SDModel of a family, loaded once per session. Read only: deep-copy it
    before applying a network (tests/networks/helpers.py `build` does)."""
    from loraforge.config.model import ModelConfig
    from loraforge.models.loading import load_model

    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = load_model(ModelConfig(family=family))
        return cache[family]

    return get


@pytest.fixture
def random_toy(tmp_path, monkeypatch):
    """The toy model's shipped files (one-file fp16 weights and their report) made from a randomly initialised toy
    pipeline and put in place of the real ones: the code paths of the toy model without its pretrained weights."""
    import json

    import torch

    from loraforge.models import toy
    from loraforge.utils.files import file_sha256, save_safetensors_atomic

    torch.manual_seed(0)
    pipe = toy.toy_pipeline()
    tensors = {f"{part}.{k}": v.half() for part in ("unet", "vae", "text_encoder")
               for k, v in getattr(pipe, part).state_dict().items()}
    weights, report = tmp_path / "toy-sd15.safetensors", tmp_path / "toy-sd15.json"
    save_safetensors_atomic(tensors, weights, metadata={"vae_scaling_factor": "0.5"})
    report.write_text(json.dumps({"sha256": file_sha256(weights)}))
    monkeypatch.setattr(toy, "WEIGHTS", weights)
    monkeypatch.setattr(toy, "REPORT", report)
    return pipe


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (`pytestmark = pytest.mark.usefixtures("one_thread")`): the FLUX and overfit
    tests' small matmuls gain nothing from a second thread, which the other xdist worker needs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
