"""Every user error the CLI knows of ends in one message naming the file or the field, exit code 2 and no traceback;
`--debug` shows the traceback.

The table runs through the real command line: each case is its own `loraforge.cli.main([...])` call with its own
stderr, all in one Python process (one torch import instead of one per case) started as `python -c DRIVER`, which
does what `python -m loraforge` does (an exception that escapes is printed with its traceback, exit code 1). The
traceback and `--debug` cases run as real `python -m loraforge` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

DRIVER = r"""
import contextlib, io, json, logging, sys, traceback
from loraforge.cli import main

results = []
for argv, missing_packages in json.loads(sys.argv[1]):
    logging.getLogger("loraforge").handlers.clear()  # the CLI binds its log handler to the current stderr
    saved = {name: sys.modules.get(name) for name in missing_packages}
    sys.modules.update(dict.fromkeys(missing_packages))  # None: `import name` raises ImportError
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        except BaseException:
            traceback.print_exc()
            code = 1
    for name, module in saved.items():
        sys.modules.pop(name)
        if module is not None:
            sys.modules[name] = module
    results.append({"code": code, "stderr": err.getvalue()})
print("RESULTS " + json.dumps(results))
"""


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")


def _lora(path: Path) -> Path:
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4),
               "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0)}, str(path))
    return path


def _cases(tmp: Path) -> list[tuple[str, list[str], list[str]]]:
    """(name, argv, substrings stderr must contain: the file or field it is about). A name ending in
    `[without PACKAGE]` runs with PACKAGE made unimportable."""
    (tmp / "typo.toml").write_text("[network]\nrnak = 4\n")
    (tmp / "broken.toml").write_text("[network\nrank = 4\n")
    (tmp / "small").mkdir()
    Image.new("RGB", (16, 16)).save(tmp / "small" / "a.png")
    (tmp / "prompts.txt").write_text("a photo of a cat --w abc\n")
    for name in ("lora.bin", "emb.pt", "model.ckpt", "lora.ckpt"):
        torch.save({"x": torch.zeros(1)}, tmp / name)
    lora = _lora(tmp / "lora.safetensors")
    corrupt = tmp / "corrupt.safetensors"
    corrupt.write_text("not a safetensors file")
    _lora(tmp / "exists.safetensors")
    finished = tmp / "out" / "done"
    finished.mkdir(parents=True)
    (finished / "config.toml").write_text("")
    out = ["--set", f"output.output_dir={str(tmp / 'out')!r}", "--set", "output.log_with='none'"]
    no = str(tmp / "missing.safetensors")
    return [
        ("config key typo", ["train", str(tmp / "typo.toml"), "--dry-run"], ["typo.toml", "rnak", "'rank'"]),
        ("bad TOML", ["train", str(tmp / "broken.toml"), "--dry-run"], ["broken.toml"]),
        ("missing config file", ["train", str(tmp / "nope.toml"), "--dry-run"], ["nope.toml"]),
        ("--set typo", ["train", "--set", "training.max_train_step=3", "--dry-run"], ["max_train_step"]),
        ("bad value", ["train", "--set", "network.rank=-1", "--dry-run"], ["network.rank"]),
        ("unknown optimizer", ["train", "--set", "optimizer.type='lion'", "--dry-run"], ["optimizer.type", "lion"]),
        ("missing dataset folder", ["train", "--set", f"dataset.instance_dir={str(tmp / 'nodata')!r}", "--dry-run"],
         ["nodata"]),
        ("missing kohya folder", ["train", "--set", f"dataset.train_data_dir={str(tmp / 'noimg')!r}", "--dry-run"],
         ["dataset.train_data_dir", "noimg"]),
        ("images too small", ["train", "--set", f"dataset.instance_dir={str(tmp / 'small')!r}",
                              "--set", "dataset.instance_prompt='a dog'", "--dry-run"], ["a.png", "too small"]),
        ("pivotal tuning without the token", ["train", "--set", "training.train_text_encoder_ti=true", "--dry-run"],
         ["training.token_abstraction", "'TOK'"]),
        ("missing model file", ["train", "--set", f"model.pretrained_model_name_or_path={no!r}", "--dry-run"],
         ["missing.safetensors", "model.pretrained_model_name_or_path"]),
        ("corrupt model file", ["train", "--set", f"model.pretrained_model_name_or_path={str(corrupt)!r}", "--dry-run"],
         ["corrupt.safetensors"]),
        ("pickled model", ["train", "--set", f"model.pretrained_model_name_or_path={str(tmp / 'model.ckpt')!r}",
                           "--dry-run"], ["model.ckpt", "allow_pickle"]),
        ("finished run folder", ["train", *out, "--set", "output.output_name='done'"], ["done", "output.overwrite"]),
        ("resume without checkpoint", ["train", *out, "--set", "output.output_name='fresh'",
                                       "--set", "training.resume='latest'", "--set", "model.family='sd15'",
                                       "--set", "network.rank=2"], ["training.resume", "checkpoint"]),
        ("target_modules match nothing", ["train", *out, "--set", "output.output_name='t'",
                                          "--set", "network.target_modules=['nothing']"],
         ["network.target_modules", "nothing"]),
        ("missing optimizer package [without bitsandbytes]",
         ["train", *out, "--set", "output.output_name='bnb'", "--set", "optimizer.type='adamw8bit'"],
         ["optimizer.type = 'adamw8bit'", "bitsandbytes"]),
        ("unknown sampler", ["sample", "--prompt", "a cat", "--sampler", "nope", "-o", str(tmp / "s")],
         ["nope", "sampler"]),
        ("bad prompt file", ["sample", "--prompt-file", str(tmp / "prompts.txt"), "-o", str(tmp / "s")],
         ["prompts.txt", "--w"]),
        ("missing prompt file", ["sample", "--prompt-file", str(tmp / "none.txt"), "-o", str(tmp / "s")],
         ["none.txt"]),
        ("sample: missing LoRA", ["sample", "--prompt", "a cat", "--lora", no, "-o", str(tmp / "s")],
         ["missing.safetensors"]),
        ("inspect: missing file", ["inspect", no], ["missing.safetensors"]),
        ("inspect: not a safetensors file", ["inspect", str(tmp / "corrupt.safetensors")], ["corrupt.safetensors"]),
        ("merge into-model: pickled LoRA", ["merge", "into-model", "--family", "sd15", "--lora", str(tmp / "lora.bin"),
                                            "-o", str(tmp / "m1.safetensors")], ["lora.bin", "--allow-pickle"]),
        ("check: missing file", ["check", no], ["missing.safetensors"]),
        ("check: pickle", ["check", str(tmp / "lora.ckpt")], ["lora.ckpt", ".safetensors"]),
        ("check: not a safetensors file", ["check", str(tmp / "corrupt.safetensors")], ["corrupt.safetensors"]),
        ("check: --model not a model", ["check", str(lora), "--model", str(tmp)], ["--model", "model_index.json"]),
        ("convert: missing file", ["convert", no, str(tmp / "c.safetensors")], ["missing.safetensors"]),
        ("convert: pickle", ["convert", str(tmp / "lora.bin"), str(tmp / "c.safetensors")],
         ["lora.bin", "--allow-pickle"]),
        ("convert: pickled embedding", ["convert", str(tmp / "emb.pt"), str(tmp / "e.safetensors")],
         ["emb.pt", "--allow-pickle"]),
        ("convert: output exists", ["convert", str(lora), str(tmp / "exists.safetensors"), "--to", "kohya"],
         ["exists.safetensors", "--overwrite"]),
        ("resize: missing file", ["resize", no, "-o", str(tmp / "r.safetensors"), "--rank", "2"],
         ["missing.safetensors"]),
        ("resize: output exists", ["resize", str(lora), "-o", str(tmp / "exists.safetensors"), "--rank", "2"],
         ["exists.safetensors", "--overwrite"]),
        ("merge loras: missing file", ["merge", "loras", no, str(lora), "-o", str(tmp / "m.safetensors")],
         ["missing.safetensors"]),
        ("merge into-model: missing model", ["merge", "into-model", str(tmp / "nomodel.safetensors"), "--lora",
                                             str(lora), "-o", str(tmp / "m2.safetensors")], ["nomodel.safetensors"]),
        ("merge checkpoints: missing", ["merge", "checkpoints", no, str(tmp / "b.safetensors"), "-o",
                                        str(tmp / "m3.safetensors")], ["missing.safetensors"]),
        ("extract: missing tuned", ["extract", "--tuned", no, "-o", str(tmp / "x.safetensors"), "--rank", "2"],
         ["missing.safetensors"]),
    ]


def run_user_error_cases(cases: list[tuple], cwd: Path) -> list[str]:
    """Run (name, argv, expected substrings[, forbidden substrings]) cases through the CLI in one process; the
    failures: an exit code other than 2, a traceback, an expected substring missing from stderr or a forbidden one
    present."""
    runs = [(argv, [name.split("[without ")[1].rstrip("]")] if "[without " in name else []) for name, argv, *_ in cases]
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(runs)],
                          env=_env(), capture_output=True, text=True, timeout=600, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.split("RESULTS ", 1)[1])
    failures = []
    for (name, _, expected, *forbidden), r in zip(cases, results):
        missing = [s for s in expected if s not in r["stderr"]]
        present = [s for s in (forbidden[0] if forbidden else []) if s in r["stderr"]]
        if r["code"] != 2 or "Traceback" in r["stderr"] or missing or present:
            failures.append(f"{name}: exit {r['code']}, missing {missing}, present {present}\n{r['stderr'][-1500:]}")
    return failures


def test_every_user_error_is_one_message_without_traceback(tmp_path, tiny_dirs):
    failures = run_user_error_cases(_cases(tmp_path), tmp_path)
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("debug", [[], ["--debug"]], ids=["plain", "debug"])
def test_a_real_process_shows_the_traceback_only_with_debug(tmp_path, tiny_dirs, debug):
    # target_modules that match nothing used to escape as a ValueError with its traceback
    cmd = [sys.executable, "-m", "loraforge", "train", "--set", f"output.output_dir={str(tmp_path)!r}",
           "--set", "output.log_with='none'", "--set", "network.target_modules=['nothing']", *debug]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "network.target_modules = ['nothing'] matched no unet module" in proc.stderr
    assert ("Traceback" in proc.stderr) == bool(debug), proc.stderr[-3000:]
