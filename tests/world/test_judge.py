"""The judge reads scenes back from images: the shipped weights read fresh generator images right on every attribute,
tell the held-out concepts (the heart, outlined and striped) from the others, take PIL images or tensors of any
size, and a missing or damaged weights file says how to make it."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from loraforge.errors import InputNotFoundError, UnsupportedError
from loraforge.utils.files import save_safetensors_atomic
from loraforge.world.judge import WEIGHTS, Judge, accuracy, load_judge, to_tensor
from loraforge.world.scene import ATTRIBUTES, BASE_SHAPES, FILLS, SHAPES, render, scenes

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def judge():
    return load_judge()


def test_reads_fresh_generator_scenes(judge):
    fresh = scenes(12345, 200, shapes=SHAPES, fills=FILLS)  # neither the training nor the report's seed
    result = accuracy(judge, fresh)
    assert set(result) == set(ATTRIBUTES)
    assert all(v >= 0.95 for v in result.values()), result


def test_tells_the_held_out_concepts_apart(judge):
    rng = random.Random(5)
    base = scenes(99, 30)  # base shapes, filled
    hearts = [replace(s, shape="heart") for s in base]
    fills = [replace(s, shape=rng.choice(SHAPES), fill=f) for s in base for f in FILLS]
    read = judge.read([render(s) for s in base + hearts + fills])
    shapes_read = [r["shape"] for r in read[:2 * len(base)]]
    assert shapes_read[len(base):].count("heart") >= len(base) - 1
    assert sum(shape in BASE_SHAPES for shape in shapes_read[:len(base)]) >= len(base) - 1
    fills_read = [r["fill"] for r in read[2 * len(base):]]
    right = sum(r == s.fill for r, s in zip(fills_read, fills))
    assert right >= len(fills) - 2, list(zip(fills_read, [s.fill for s in fills]))


def test_reads_pil_images_and_tensors_of_any_size(judge):
    items = scenes(4, 16, shapes=SHAPES, fills=FILLS)
    images = [render(s) for s in items]
    expected = [{name: getattr(s, name) for name in ATTRIBUTES} for s in items]
    as_tensor = to_tensor(images)
    assert as_tensor.shape == (16, 3, 64, 64) and 0 <= as_tensor.min() and as_tensor.max() <= 1
    assert judge.read(images) == judge.read(as_tensor) == judge.read(as_tensor, batch_size=5)
    assert sum(r == e for r, e in zip(judge.read(images), expected)) >= 15
    bigger = [im.resize((128, 128), Image.Resampling.NEAREST) for im in images]  # the same scenes at 128 px
    assert judge.read(bigger) == judge.read(torch.nn.functional.interpolate(as_tensor, scale_factor=2.0))
    assert sum(r == e for r, e in zip(judge.read(bigger), expected)) >= 15
    assert judge.read(images[0]) == judge.read(images[:1]) and judge.read([]) == []
    probs = judge.probabilities(as_tensor)
    for name, classes in ATTRIBUTES.items():
        assert probs[name].shape == (16, len(classes))
        assert torch.allclose(probs[name].sum(-1), torch.ones(16))


def test_missing_or_damaged_weights_say_how_to_make_them(tmp_path):
    missing = tmp_path / "judge.safetensors"
    with pytest.raises(InputNotFoundError) as e:
        load_judge(missing)
    assert str(missing) in str(e.value) and "python scripts/train_judge.py" in str(e.value)
    missing.write_bytes(b"\x00" * 40)
    with pytest.raises(UnsupportedError) as e:
        load_judge(missing)
    assert str(missing) in str(e.value) and "python scripts/train_judge.py" in str(e.value)
    save_safetensors_atomic({"other.weight": torch.zeros(3)}, missing)
    with pytest.raises(UnsupportedError) as e:
        load_judge(missing)
    assert str(missing) in str(e.value) and "python scripts/train_judge.py" in str(e.value)


def test_shipped_weights_are_fp16_and_the_report_meets_the_target():
    with safe_open(str(WEIGHTS), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys() if "num_batches" not in k} == {"F16"}
    judge = load_judge()
    assert all(p.dtype == torch.float32 for p in judge.parameters()) and not judge.training
    assert sum(p.numel() for p in judge.parameters()) <= 1_500_000
    report = json.loads((WEIGHTS.parent / "judge.json").read_text())
    assert report["eval_images"] >= 2000 and report["machine"] == "2-core CPU, no GPU"
    assert set(report["accuracy_clean"]) == set(ATTRIBUTES)
    assert min(report["accuracy_clean"].values()) >= 0.98, report["accuracy_clean"]


def test_world_package_does_not_import_torch():
    code = "import sys, loraforge.world, loraforge.world.scene; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_training_script_writes_weights_the_judge_loads(tmp_path):
    spec = importlib.util.spec_from_file_location("train_judge", ROOT / "scripts" / "train_judge.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    threads = torch.get_num_threads()
    try:
        script.main(["--train", "32", "--epochs", "1", "--batch", "16", "--eval", "16", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    with safe_open(str(tmp_path / "judge.safetensors"), framework="pt") as f:
        assert f.get_slice("heads.shape.weight").get_dtype() == "F16"
    trained = load_judge(tmp_path / "judge.safetensors")
    assert isinstance(trained, Judge)
    report = json.loads((tmp_path / "judge.json").read_text())
    assert report["steps"] == 2 and report["eval_images"] == 16 and report["torch"] == torch.__version__
    assert set(report["accuracy_clean"]) == set(report["accuracy_blurred_noised"]) == set(ATTRIBUTES)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries left
