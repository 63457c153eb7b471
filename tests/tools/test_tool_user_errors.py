"""Bad inputs to the tools (issue 11 item 5): a malformed or truncated `.safetensors` given to every tool, refused
option values, a truncated init image and an output that cannot be written each end in one message that names the
file or the option, exit code 2 and no traceback. Runs through the real command line with the helper of
tests/cli/test_user_errors.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.cli.test_user_errors import run_user_error_cases


def _files(tmp: Path) -> dict[str, Path]:
    good = tmp / "good.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.ones(2, 32),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.ones(32, 2),
               "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(2.0)}, str(good))
    garbage = tmp / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    truncated = tmp / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])  # the header promises more bytes than the file has
    empty = tmp / "empty.safetensors"
    empty.write_bytes(b"")
    Image.new("RGB", (64, 64), "red").save(tmp / "init.png")
    cut = tmp / "cut.png"
    cut.write_bytes((tmp / "init.png").read_bytes()[:60])
    (tmp / "afile").write_text("a file where a folder should be")
    return {"good": good, "garbage": garbage, "truncated": truncated, "empty": empty, "cut": cut,
            "blocked": tmp / "afile" / "sub"}


def _cases(tmp: Path) -> list[tuple]:
    f = _files(tmp)
    good, o = str(f["good"]), str(tmp / "out.safetensors")
    sample = ["sample", "--prompt", "a cat", "--steps", "1", "--width", "64", "--height", "64"]
    cases = []
    for bad in ("truncated", "empty"):  # the other kinds of damage, through the common readers
        b, n = str(f[bad]), f[bad].name
        cases += [(f"inspect {bad}", ["inspect", b], [n]),
                  (f"merge loras {bad} second", ["merge", "loras", good, b, "-o", o], [n], ["good.safetensors"]),
                  (f"merge into-model base {bad}", ["merge", "into-model", b, "--lora", good, "-o", o], [n])]
    for bad in ("garbage",):  # every tool and every file option
        b, n = str(f[bad]), f[bad].name
        cases += [
            (f"inspect {bad}", ["inspect", b], [n]),
            (f"check {bad}", ["check", b], [n]),
            (f"resize {bad}", ["resize", b, "-o", o, "--rank", "1"], [n]),
            (f"convert {bad}", ["convert", b, o, "--to", "kohya"], [n]),
            # with two inputs the message names the broken one only
            (f"merge loras {bad} second", ["merge", "loras", good, b, "-o", o], [n], ["good.safetensors"]),
            (f"merge loras {bad} first", ["merge", "loras", b, good, "-o", o], [n], ["good.safetensors"]),
            (f"merge into-model --lora {bad}", ["merge", "into-model", "--lora", b, "-o", o], [n]),
            (f"merge into-model base {bad}", ["merge", "into-model", b, "--lora", good, "-o", o], [n],
             ["good.safetensors"]),
            (f"merge checkpoints {bad}", ["merge", "checkpoints", b, b, "-o", o], [n]),
            (f"sample --lora {bad}", [*sample, "--lora", b, "-o", str(tmp / "s")], [n]),
            (f"sample --model {bad}", [*sample, "--model", b, "-o", str(tmp / "s")], [n]),
            (f"sample --embedding {bad}", [*sample, "--embedding", b, "-o", str(tmp / "s")], [n]),
            (f"extract --tuned {bad}", ["extract", "--tuned", b, "-o", o, "--rank", "1"], [n]),
        ]
    blocked = str(f["blocked"])
    cases += [
        ("sample --steps 0", [*sample[:-6], "--steps", "0", "-o", str(tmp / "s")], ["--steps 0"]),
        ("sample --batch 0", [*sample, "--batch", "0", "-o", str(tmp / "s")], ["--batch 0"]),
        ("sample --batch-size 0", [*sample[:-6], "--batch-size", "0", "-o", str(tmp / "s")], ["--batch-size 0"]),
        ("sample --batch 0, no --steps", [*sample[:-6], "--batch", "0", "-o", str(tmp / "s")], ["--batch 0"]),
        ("resize --rank 0", ["resize", good, "-o", o, "--rank", "0"], ["--rank 0"]),
        ("extract --rank 0", ["extract", "--tuned", good, "-o", o, "--rank", "0"], ["--rank 0"]),
        ("sample truncated --init-image", [*sample, "--init-image", str(f["cut"]), "-o", str(tmp / "s")],
         ["cut.png", "--init-image"]),
        ("sample into a file", [*sample, "-o", blocked], ["afile", "not a folder"]),
        ("resize into a file", ["resize", good, "-o", f"{blocked}/r.safetensors", "--rank", "1"], ["afile"]),
        ("convert into a file", ["convert", good, f"{blocked}/c.safetensors", "--to", "diffusers"], ["afile"]),
        ("merge loras into a file", ["merge", "loras", good, good, "-o", f"{blocked}/m.safetensors"], ["afile"]),
        ("merge into-model into a file", ["merge", "into-model", "--lora", good, "-o", f"{blocked}/m.safetensors"],
         ["afile"]),
    ]
    return cases


def test_bad_tool_inputs_are_one_message_naming_the_file(tmp_path, tiny_dirs):
    failures = run_user_error_cases(_cases(tmp_path), tmp_path)
    assert not failures, "\n\n".join(failures)
    assert not list(tmp_path.glob("out*")) and not (tmp_path / "s").exists()  # nothing half-written


def test_a_read_only_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    from loraforge.errors import OutputNotWritableError
    from loraforge.tools import common

    target = tmp_path / "ro" / "new" / "x.safetensors"
    (tmp_path / "ro").mkdir()
    # root ignores permission bits, so the permission answer is stubbed; the folder walk is real
    monkeypatch.setattr(common.os, "access", lambda p, mode: Path(p) != tmp_path / "ro")
    with pytest.raises(OutputNotWritableError, match=r"the folder .*ro is not writable"):
        common.check_output(target, overwrite=False)
    assert common.check_output(tmp_path / "x.safetensors", overwrite=False) == tmp_path / "x.safetensors"
