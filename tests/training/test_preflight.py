"""Everything a run needs is checked before the first step: `train --dry-run` and `train` refuse the same bad inputs
with exit code 2, a message naming the field and the fix, and nothing written in the run folder."""

from __future__ import annotations

import logging
import re

import pytest

from loraforge.cli import main
from loraforge.config import load_config
from loraforge.training import preflight as preflight_module
from loraforge.errors import TrainingError
from loraforge.training.preflight import check_inputs, lora_size_estimate, preflight, tracker_run


def _cases(tmp):
    (tmp / "prompts.txt").write_text("a cat --w 100\n")
    (tmp / "latin1.txt").write_bytes("un caf\xe9 --w 64\n".encode("latin-1"))
    (tmp / "a-file").write_text("")
    return [
        ("width not a multiple of 8", ["sampling.width=100"], ["sampling.width", "not a multiple of 8", "try 96 or 104"]),
        ("negative seed", ["training.seed=-1"], ["training.seed", ">= 0"]),
        ("seed of 2^32", ["training.seed=4294967296"], ["training.seed", "<= 4294967295"]),
        ("sampling seed of 2^32", ["sampling.seed=4294967296"], ["sampling.seed", "<= 4294967295"]),
        ("missing prompt file", [f"sampling.sample_prompts={str(tmp / 'none.txt')!r}"],
         ["none.txt", "sampling.sample_prompts"]),
        ("prompt file size", [f"sampling.sample_prompts={str(tmp / 'prompts.txt')!r}"],
         ["prompts.txt:1", "width 100", "multiple of 8"]),
        ("prompt file not UTF-8", [f"sampling.sample_prompts={str(tmp / 'latin1.txt')!r}"],
         ["latin1.txt", "UTF-8"]),
        ("missing model folder", [f"model.pretrained_model_name_or_path={str(tmp / 'models' / 'sd')!r}"],
         ["model.pretrained_model_name_or_path", "no such file or folder"]),
        ("missing VAE file", [f"model.vae={str(tmp / 'vae.safetensors')!r}"], ["model.vae", "vae.safetensors"]),
        ("missing resume folder", [f"training.resume={str(tmp / 'out' / 'ckpt')!r}"], ["training.resume", "ckpt"]),
        ("output folder under a file", [f"output.output_dir={str(tmp / 'a-file' / 'out')!r}"],
         ["a-file", "is a file", "output.output_dir"]),
        ("optimizer_args typo", ["optimizer.type=prodigy", "optimizer.optimizer_args.d_coeff=2"],
         ["optimizer.optimizer_args", "'d_coeff'", "'d_coef'"]),
        ("optimizer class not importable", ["optimizer.type='no_such_pkg.Fast'"],
         ["optimizer.type", "no_such_pkg", "cannot be imported"]),
        ("logging folder under a file",
         ["output.log_with='tensorboard'", f"output.logging_dir={str(tmp / 'a-file' / 'tb')!r}"],
         ["a-file", "is a file", "output.logging_dir"]),
    ]


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "train"])
def test_bad_inputs_are_refused_before_anything_is_written(tmp_path, tiny_dirs, capsys, dry_run):
    failures = []
    for name, sets, expected in _cases(tmp_path):
        run_dir = tmp_path / "out" / "run"
        argv = ["train", "--set", f"output.output_dir={str(tmp_path / 'out')!r}", "--set", "output.output_name='run'",
                "--set", "output.log_with='none'", "--set", "training.max_train_steps=2"]
        for s in sets:
            argv += ["--set", s]
        logging.getLogger("loraforge").handlers.clear()  # the CLI binds its handler to the current stderr
        code = main(argv + (["--dry-run"] if dry_run else []))
        err = capsys.readouterr().err
        missing = [s for s in expected if s not in err]
        if code != 2 or missing or "Traceback" in err or run_dir.exists():
            failures.append(f"{name}: exit {code}, missing {missing}, run folder made: {run_dir.exists()}\n{err[-800:]}")
    assert not failures, "\n\n".join(failures)


def test_prompt_file_seed_out_of_range_is_refused(tmp_path):
    (tmp_path / "p.txt").write_text("# comment\na cat --d 4294967296\n")
    cfg = load_config(None, [f"sampling.sample_prompts={str(tmp_path / 'p.txt')!r}",
                             f"output.output_dir={str(tmp_path)!r}"])
    with pytest.raises(Exception, match=r"p.txt:2: --d 4294967296"):
        preflight(cfg)


def test_a_good_config_passes_and_says_what_it_could_not_check(tmp_path, tiny_dirs):
    (tmp_path / "p.txt").write_text("\ufeffa cat --w 96 --h 64 --d 3\n")  # a BOM is not part of the prompt
    cfg = load_config(None, [f"sampling.sample_prompts={str(tmp_path / 'p.txt')!r}",
                             "model.pretrained_model_name_or_path='someone/some-model'",
                             f"output.output_dir={str(tmp_path / 'new' / 'deeper')!r}"])
    notes = preflight(cfg, "sd15")
    assert any("hub id" in n and "someone/some-model" in n for n in notes), notes
    assert not (tmp_path / "new").exists()  # nothing created
    toy = load_config(None, ["model.pretrained_model_name_or_path='toy'",
                             f"output.output_dir={str(tmp_path / 'toy')!r}"])
    assert not any("hub id" in n for n in preflight(toy, "sd15"))  # "toy" is the shipped model, not a hub id


def test_disk_estimate_and_low_space_warning(tmp_path, tiny_dirs, monkeypatch, caplog):
    sets = [f"model.pretrained_model_name_or_path={str(tiny_dirs['sd15'])!r}", f"output.output_dir={str(tmp_path)!r}",
            "network.rank=4", "output.save_precision='fp16'"]
    cfg = load_config(None, sets)
    # rank × Σ(in + out) of the SD 1.5 UNet's attention layers × 2 bytes, two files (kohya + diffusers)
    assert lora_size_estimate(cfg, "sd15") == 4 * 199_296 * 2 * 2
    with_te = load_config(None, sets + ["network.train_text_encoder=true", "training.save_every_n_steps=10"])
    assert lora_size_estimate(with_te, "sd15") == 4 * 273_024 * (2 * 2 + 12 + 2 * 2)

    class Usage:
        free = 200 * 2**20

    monkeypatch.setattr(preflight_module.shutil, "disk_usage", lambda path: Usage)
    with caplog.at_level(logging.WARNING, logger="loraforge"):
        notes = preflight(cfg, "sd15")
    assert any("LOW" in n for n in notes), notes
    assert "free some space or change output.output_dir" in caplog.text
    Usage.free = 100 * 2**30
    assert not any("LOW" in n for n in preflight(cfg, "sd15"))


@pytest.mark.parametrize("package,option,match,fallback", [
    ("wandb", "output.log_with=wandb",
     r"output.log_with = 'wandb' needs the wandb package.*pip install 'loraforge\[wandb\]'.*'tensorboard'",
     ("output", "log_with", "tensorboard")),  # TensorBoard needs nothing more
    ("xformers", "training.attention=xformers",
     r"training.attention = 'xformers' needs the xformers package.*training.attention = 'sdpa'", None),
])
def test_an_optional_package_that_is_missing_is_named(monkeypatch, tmp_path, package, option, match, fallback):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
    cfg = load_config(None, [option, f"output.output_dir={str(tmp_path)!r}"])
    with pytest.raises(TrainingError, match=match):
        check_inputs(cfg)
    if fallback:
        section, key, value = fallback
        setattr(getattr(cfg, section), key, value)
        check_inputs(cfg)


def test_wandb_run_is_named_and_logs_into_logging_dir(tmp_path):
    cfg = load_config(None, ["output.log_with=wandb", "output.output_name='cat'",
                             f"output.logging_dir={str(tmp_path / 'wb')!r}"])
    assert tracker_run(cfg) == ("loraforge", {"wandb": {"name": "cat", "dir": str(tmp_path / "wb")}})
    cfg.output.log_prefix = "cat_"
    project, kwargs = tracker_run(cfg)
    assert project == "loraforge" and re.fullmatch(r"cat_\d{14}", kwargs["wandb"]["name"])
    cfg.output.log_with = "tensorboard"
    assert re.fullmatch(r"cat_\d{14}", tracker_run(cfg)[0]) and tracker_run(cfg)[1] == {}
    cfg.output.log_prefix = None
    assert tracker_run(cfg) == ("loraforge", {})
