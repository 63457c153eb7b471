"""The corpus's inputs, written by code (no binary is committed): images, datasets, configs, damaged and lying
`.safetensors` files, NaN LoRAs, pickles, run folders. `Inputs` makes them; each case's builder calls it to write
what the case needs into the case's own folder.

`python -m tests.corpus.build DEST` writes every case's inputs into DEST/<case>/ and DEST/cases.json (the command
line and the expected exit code and message of each), to look at or to run by hand."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
import struct
import sys
import tempfile
from pathlib import Path

# a config for a short run on the tiny SD 1.5: every run-folder case resumes or restarts this run
BASE_SETS = ("model.family='sd15'", "output.log_with='none'", "training.max_train_steps=2", "network.rank=4",
             "training.save_every_n_steps=1", "sampling.at_end=false", "optimizer.learning_rate=1e-3")


class _Evil:
    """Unpickling this writes a marker file: a loader that executes pickles would leave the marker behind."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Inputs:
    """Makes the inputs. What is costly (the tiny models, a trained run) is made once under `root/_shared` and copied
    into a case folder when a case needs it, so no case can damage another's inputs."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.shared = self.root / "_shared"
        self._run: Path | None = None

    # ---------------------------------------------------------------------------------------------- models and runs
    def tiny(self, family: str = "sd15") -> Path:
        from loraforge.models.tiny import tiny_model_dir

        return tiny_model_dir(family)

    def run(self) -> Path:
        """A finished 2-step run on the tiny SD 1.5 (checkpoints step-000001 and step-000002), trained once."""
        if self._run is None:
            from loraforge.config import load_config
            from loraforge.training.trainer import Trainer

            out = self.shared / "out"
            cfg = load_config(None, [*BASE_SETS, f"output.output_dir={str(out)!r}", "output.output_name='base'"])
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                Trainer(cfg).run()  # quietly: its progress is not a case's output
            self._run = out / "base"
        return self._run

    def train(self, d: Path, *sets: str, name: str = "base") -> list[str]:
        """`train` on the base config, into d/out/<name>, with more --set values."""
        argv = ["train"]
        for s in (*BASE_SETS, f"output.output_dir={str(d / 'out')!r}", f"output.output_name={name!r}", *sets):
            argv += ["--set", s]
        return argv

    def copy_run(self, d: Path, interrupted: bool = False) -> Path:
        """The base run copied to d/out/base; `interrupted`: only its checkpoints, as a run stopped before its final
        files."""
        dest = d / "out" / "base"
        shutil.copytree(self.run(), dest)
        if interrupted:
            for path in dest.iterdir():
                if path.name != "checkpoints":
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        return dest

    def checkpoint(self, d: Path, step: int = 2) -> Path:
        return self.copy_run(d, interrupted=True) / "checkpoints" / f"step-{step:06d}"

    # ---------------------------------------------------------------------------------------------- LoRA files
    def lora(self, d: Path, name: str = "lora.safetensors") -> Path:
        """The base run's kohya file (UNet LoRA of the tiny SD 1.5)."""
        dest = d / name
        shutil.copy(self.run() / "base.safetensors", dest)
        return dest

    def diffusers_lora(self, d: Path, name: str = "pytorch_lora_weights.safetensors") -> Path:
        dest = d / name
        shutil.copy(self.run() / "pytorch_lora_weights.safetensors", dest)
        return dest

    def bad_values_lora(self, d: Path, name: str = "diverged.safetensors", value: float = float("nan")) -> Path:
        """The base run's kohya file with one value of its first up factor set to `value` (NaN, Inf)."""
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        src = self.run() / "base.safetensors"
        sd = load_file(str(src))
        with safe_open(str(src), "pt") as f:
            meta = f.metadata()
        key = sorted(k for k in sd if k.endswith("lora_up.weight"))[0]
        sd[key][0, 0] = value
        save_file(sd, str(d / name), metadata=meta)
        return d / name

    def tensors(self, d: Path, name: str, tensors: dict, metadata: dict | None = None) -> Path:
        from safetensors.torch import save_file

        save_file(tensors, str(d / name), metadata=metadata)
        return d / name

    def fake_model(self, d: Path, name: str = "model.safetensors") -> Path:
        """A file with the keys of an original-layout SD 1.5 checkpoint (a few small tensors): a model, not a LoRA."""
        import torch

        keys = ["model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.out.2.weight",
                "first_stage_model.decoder.conv_in.weight", "cond_stage_model.transformer.text_model.embeddings."
                "token_embedding.weight"]
        return self.tensors(d, name, {k: torch.zeros(4, 4) for k in keys})

    def embedding(self, d: Path, name: str = "emb.safetensors", value: float = 0.0) -> Path:
        import torch

        return self.tensors(d, name, {"emb_params": torch.full((2, 32), value)})

    def raw(self, d: Path, name: str, data: bytes) -> Path:
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
        return d / name

    def safetensors_bytes(self, header: dict | bytes, body: bytes = b"", length: int | None = None) -> bytes:
        """A .safetensors file by hand: 8-byte little-endian header length (or `length`, to lie), header, body."""
        head = header if isinstance(header, bytes) else json.dumps(header).encode()
        return struct.pack("<Q", len(head) if length is None else length) + head + body

    def pickle(self, d: Path, name: str) -> Path:
        import torch

        torch.save({"lora_unet_x.lora_down.weight": torch.zeros(2, 4)}, d / name)
        return d / name

    def evil_pickle(self, d: Path, name: str, marker: Path) -> Path:
        (d / name).write_bytes(pickle.dumps({"x": _Evil(str(marker))}))
        return d / name

    # ---------------------------------------------------------------------------------------------- images and data
    def image(self, path: Path, size=(64, 64), color=(200, 30, 30), mode: str = "RGB", fmt: str | None = None) -> Path:
        from PIL import Image

        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new(mode, size, color).save(path, format=fmt)
        return path

    def images(self, folder: Path, n: int = 2, size=(64, 64), ext: str = "png") -> Path:
        for i in range(n):
            self.image(folder / f"img{i}.{ext}", size, ((50 * i) % 255, 100, 200 - 30 * i))
        return folder

    def data_args(self, folder: Path, *more: str) -> list[str]:
        """--set values for a one-folder dataset of 64 px images."""
        sets = [f"dataset.instance_dir={str(folder)!r}", "dataset.instance_prompt='a photo of sks'",
                "dataset.resolution=64", *more]
        return [a for s in sets for a in ("--set", s)]

    def text(self, path: Path, text: str, encoding: str = "utf-8") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode(encoding))
        return path


def build_all(dest: Path) -> list[dict]:
    """Write every case's inputs into dest/<case>/ and describe the cases in dest/cases.json."""
    from .cases import CASES
    from .runner import case_folder

    dest.mkdir(parents=True, exist_ok=True)
    inputs = Inputs(dest)
    described = []
    for case in CASES:
        folder = case_folder(dest, case)
        folder.mkdir(parents=True, exist_ok=True)
        argv = [str(a) for a in case.argv(folder, inputs)]
        described.append({"id": case.id, "class": case.cls, "argv": ["loraforge", *argv], "exit_code": case.rc,
                          "message_has": case.expected(), "message_lacks": list(case.forbid),
                          "debug": case.debug, "xfail": case.xfail})
    (dest / "cases.json").write_text(json.dumps(described, indent=1))
    return described


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tests.corpus.build DEST", file=sys.stderr)
        return 2
    os.environ.setdefault("LORAFORGE_HOME", tempfile.mkdtemp(prefix="loraforge-corpus-home-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cases = build_all(Path(args[0]))
    print(f"{len(cases)} cases written to {args[0]} (cases.json lists them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
