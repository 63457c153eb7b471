"""Corpus cases of the tools around a LoRA (inspect, check, resize, convert, merge, extract, sample, import, doctor):
damaged, lying and NaN files, a file of one kind given where another is expected, pickles, bad options, outputs
that cannot or must not be written."""

from __future__ import annotations

from pathlib import Path

from .runner import Case as C

DAMAGED = "download or export it again"  # the fix every damaged .safetensors message gives
NAN_FIX = "diverged"  # the NaN messages say the file comes from a diverged run and what to do
SAMPLE = ["sample", "--prompt", "a cat", "--steps", "1", "--width", "64", "--height", "64"]


def _damaged(x, d: Path, kind: str) -> Path:
    """A `.safetensors` file damaged in one way."""
    name = f"{kind}.safetensors"
    header = {"a.lora_down.weight": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]}}
    data = {
        "garbage": b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}",
        "empty": b"",
        "seven-bytes": b"\x01\x02\x03\x04\x05\x06\x07",
        "lying-length": x.safetensors_bytes(header, b"\0" * 32, length=10**12),  # the header "is" 1 TB long
        "past-the-end": x.safetensors_bytes({"a.lora_down.weight": {"dtype": "F32", "shape": [1000, 1000],
                                                                    "data_offsets": [0, 4_000_000]}}, b"\0" * 32),
        "unknown-dtype": x.safetensors_bytes({"a.lora_down.weight": {"dtype": "F99", "shape": [2, 4],
                                                                     "data_offsets": [0, 32]}}, b"\0" * 32),
        "header-not-object": x.safetensors_bytes(b"[1, 2, 3]"),
        "png-renamed": b"\x89PNG\r\n\x1a\n" + b"\0" * 64,
    }[kind]
    return x.raw(d, name, data)


def _truncated_lora(x, d: Path) -> Path:
    lora = x.lora(d, "cut.safetensors")
    lora.write_bytes(lora.read_bytes()[:-500])
    return lora


def _unknown_keys_lora(x, d: Path) -> Path:
    import torch

    return x.tensors(d, "elsewhere.safetensors", {
        "lora_unet_no_such_block_proj.lora_down.weight": torch.zeros(2, 32),
        "lora_unet_no_such_block_proj.lora_up.weight": torch.zeros(32, 2),
        "lora_unet_no_such_block_proj.alpha": torch.tensor(2.0)})


def _wrong_shape_lora(x, d: Path) -> Path:
    """The base LoRA with every factor of one module one column too wide."""
    import torch
    from safetensors.torch import load_file

    sd = load_file(str(x.lora(d, "src.safetensors")))
    (d / "src.safetensors").unlink()
    key = sorted(k for k in sd if k.endswith("lora_down.weight"))[0]
    sd[key] = torch.zeros(sd[key].shape[0], sd[key].shape[1] + 3)
    return x.tensors(d, "wide.safetensors", sd)


def _loha(x, d: Path) -> Path:
    import torch

    m = "lora_unet_down_blocks_0_attentions_0_proj_in"
    return x.tensors(d, "loha.safetensors", {f"{m}.hada_w1_a": torch.ones(32, 2), f"{m}.hada_w1_b": torch.ones(2, 32),
                                              f"{m}.hada_w2_a": torch.ones(32, 2), f"{m}.hada_w2_b": torch.ones(2, 32),
                                              f"{m}.alpha": torch.tensor(2.0)})


def _existing(x, d: Path, name: str = "out.safetensors") -> Path:
    return x.raw(d, name, b"an earlier output that must survive")


def _damaged_cases() -> list[C]:
    """Each kind of damage through the readers of every tool (the tool user-error test covers garbage and
    truncation; these are the other ways a file lies)."""
    cases = []
    kinds = ("empty", "seven-bytes", "lying-length", "past-the-end", "unknown-dtype", "header-not-object",
             "png-renamed")
    for kind in kinds:
        f = f"{kind}.safetensors"
        cases.append(C(f"inspect/{kind}", "no-file", lambda d, x, k=kind: ["inspect", _damaged(x, d, k)], file=f,
                       fix=DAMAGED))
    tools = {
        "check": lambda d, b: ["check", b],
        "resize": lambda d, b: ["resize", b, "-o", d / "r.safetensors", "--rank", "1"],
        "convert": lambda d, b: ["convert", b, d / "c.safetensors", "--to", "kohya"],
        "merge-loras": lambda d, b: ["merge", "loras", d / "lora.safetensors", b, "-o", d / "m.safetensors"],
        "merge-into-model": lambda d, b: ["merge", "into-model", "--lora", b, "-o", d / "m.safetensors"],
        "sample": lambda d, b: [*SAMPLE, "--lora", b, "-o", d / "s"],
        "extract": lambda d, b: ["extract", "--tuned", b, "-o", d / "x.safetensors", "--rank", "2"],
    }
    for (tool, argv), kind in zip(tools.items(), kinds[2:] + kinds[:2]):
        f = f"{kind}.safetensors"

        def build(d, x, argv=argv, kind=kind):
            x.lora(d)
            return argv(d, _damaged(x, d, kind))

        cases.append(C(f"{tool}/{kind}", "no-file", build, file=f, fix=DAMAGED,
                       forbid=("lora.safetensors:",)))
    return cases


def _nonfinite_cases() -> list[C]:
    nan = "diverged.safetensors"
    return [
        C("inspect/nan-lora", "nonfinite", lambda d, x: ["inspect", x.bad_values_lora(d)], rc=0, file=nan,
          also=("values: BROKEN", "NaN")),
        C("inspect/inf-lora", "nonfinite", lambda d, x: ["inspect", x.bad_values_lora(d, value=float("inf"))], rc=0,
          file=nan, also=("values: BROKEN", "Inf")),
        C("check/nan-lora", "nonfinite", lambda d, x: ["check", x.bad_values_lora(d), "--model", x.tiny()], rc=1,
          file=nan, also=("BROKEN: NaN/Inf values",)),
        C("resize/nan-lora", "nonfinite",
          lambda d, x: ["resize", x.bad_values_lora(d), "-o", d / "r.safetensors", "--rank", "2"], file=nan,
          fix=NAN_FIX),
        C("convert/nan-lora", "nonfinite",
          lambda d, x: ["convert", x.bad_values_lora(d), d / "c.safetensors", "--to", "diffusers"], file=nan,
          fix=NAN_FIX),
        C("merge-loras/nan-second", "nonfinite",
          lambda d, x: ["merge", "loras", x.lora(d), x.bad_values_lora(d), "-o", d / "m.safetensors"], file=nan,
          fix=NAN_FIX, forbid=("lora.safetensors:",)),
        C("merge-into-model/nan-lora", "nonfinite",
          lambda d, x: ["merge", "into-model", x.tiny(), "--lora", x.bad_values_lora(d), "-o", d / "m.safetensors"],
          file=nan, fix=NAN_FIX),
        C("sample/nan-lora", "nonfinite", lambda d, x: [*SAMPLE, "--lora", x.bad_values_lora(d), "-o", d / "s"],
          file=nan, fix=NAN_FIX),
        C("sample/nan-embedding", "nonfinite",
          lambda d, x: [*SAMPLE, "--embedding", x.embedding(d, "nanemb.safetensors", float("nan")), "-o", d / "s"],
          file="nanemb.safetensors", fix="NaN"),
    ]


def _kind_cases() -> list[C]:
    """A file of one kind where another is expected: a model as a LoRA, a LoRA as a model, an embedding as a LoRA."""
    return [
        C("sample/lora-as-model", "no-file", lambda d, x: [*SAMPLE, "--model", x.lora(d), "-o", d / "s"],
          file="lora.safetensors", field="model", fix="apply it with --lora"),
        C("sample/model-as-lora", "no-file", lambda d, x: [*SAMPLE, "--lora", x.fake_model(d), "-o", d / "s"],
          file="model.safetensors", field="--lora", fix="it is a base model"),
        C("sample/lora-as-embedding", "no-file", lambda d, x: [*SAMPLE, "--embedding", x.lora(d), "-o", d / "s"],
          file="lora.safetensors", field="--embedding", fix="--lora"),
        C("merge-into-model/lora-as-base", "no-file",
          lambda d, x: ["merge", "into-model", x.lora(d, "base.safetensors"), "--lora", x.lora(d),
                        "-o", d / "m.safetensors"], file="base.safetensors", fix="--lora"),
        C("merge-checkpoints/lora-as-model", "no-file",
          lambda d, x: ["merge", "checkpoints", x.lora(d), x.tiny(), "-o", d / "m.safetensors"],
          file="lora.safetensors", fix="not a Stable Diffusion model"),
        C("resize/model-as-lora", "no-file",
          lambda d, x: ["resize", x.fake_model(d), "-o", d / "r.safetensors", "--rank", "2"], file="model.safetensors",
          fix="not a LoRA"),
        C("extract/lora-as-tuned", "no-file",
          lambda d, x: ["extract", "--tuned", x.lora(d), "-o", d / "x.safetensors", "--rank", "2"],
          file="lora.safetensors", fix="not a Stable Diffusion model"),
        C("check/model-file", "no-file", lambda d, x: ["check", x.fake_model(d)], file="model.safetensors",
          fix="not a LoRA"),
        C("check/embedding-file", "no-file", lambda d, x: ["check", x.embedding(d)], file="emb.safetensors",
          fix="embedding"),
        C("inspect/folder", "no-file", lambda d, x: ["inspect", d], rc=0, fix="not a diffusers model or LoRA folder"),
        C("merge-into-model/unknown-keys", "no-file",
          lambda d, x: ["merge", "into-model", "--lora", _unknown_keys_lora(x, d), "-o", d / "m.safetensors"],
          file="elsewhere.safetensors", field="no_such_block", fix="--skip-unknown"),
        C("merge-into-model/shape-mismatch", "no-file",
          lambda d, x: ["merge", "into-model", "--lora", _wrong_shape_lora(x, d), "-o", d / "m.safetensors"],
          file="wide.safetensors", fix="shape"),
        C("merge-into-model/truncated-lora", "no-file",
          lambda d, x: ["merge", "into-model", "--lora", _truncated_lora(x, d), "-o", d / "m.safetensors"],
          file="cut.safetensors", fix=DAMAGED),
        C("resize/loha", "no-file", lambda d, x: ["resize", _loha(x, d), "-o", d / "r.safetensors", "--rank", "1"],
          file="loha.safetensors", fix="loha"),
        C("merge-checkpoints/families-differ", "no-file",
          lambda d, x: ["merge", "checkpoints", x.tiny("sd15"), x.tiny("sdxl"), "-o", d / "m.safetensors"],
          file=None, fix="SDXL"),
    ]


def _pickle_cases() -> list[C]:
    return [
        C("inspect/pickle", "no-file", lambda d, x: ["inspect", x.pickle(d, "lora.pt")], rc=0, file="lora.pt",
          fix="--allow-pickle"),
        C("resize/pickle", "no-file", lambda d, x: ["resize", x.pickle(d, "lora.bin"), "-o", d / "r.safetensors",
                                                    "--rank", "1"], file="lora.bin", fix="--allow-pickle"),
        C("sample/pickled-lora", "no-file", lambda d, x: [*SAMPLE, "--lora", x.pickle(d, "lora.ckpt"), "-o", d / "s"],
          file="lora.ckpt", fix="--allow-pickle"),
        # with --allow-pickle the weights_only loader refuses the code; the marker file would be a new file
        C("convert/evil-pickle-allowed", "no-file",
          lambda d, x: ["convert", x.evil_pickle(d, "evil.bin", d / "PWNED"), d / "c.safetensors", "--allow-pickle"],
          file="evil.bin", fix="weights_only"),
        C("inspect/evil-pickle-allowed", "no-file",
          lambda d, x: ["inspect", x.evil_pickle(d, "evil.pt", d / "PWNED"), "--allow-pickle"], file="evil.pt",
          fix="weights_only"),
    ]


def _option_cases() -> list[C]:
    o = lambda d: d / "o.safetensors"  # noqa: E731
    return [
        C("resize/conv-rank-negative", "cli",
          lambda d, x: ["resize", x.lora(d), "-o", o(d), "--rank", "2", "--conv-rank", "-1"], field="--conv-rank -1",
          fix="0"),
        C("resize/sv-fro-above-1", "cli", lambda d, x: ["resize", x.lora(d), "-o", o(d), "--sv-fro", "1.5"],
          field="--sv-fro", fix="between 0 and 1"),
        C("resize/sv-ratio-0", "cli", lambda d, x: ["resize", x.lora(d), "-o", o(d), "--sv-ratio", "0"],
          field="--sv-ratio", fix="1 or more"),
        C("resize/bad-recipe", "cli", lambda d, x: ["resize", x.lora(d), "-o", o(d), "--recipe", "fro=banana"],
          field="recipe 'fro=banana'", fix="fro_ckpt"),
        C("resize/no-rank", "cli", lambda d, x: ["resize", x.lora(d), "-o", o(d)], field="--rank", fix="give"),
        C("resize/rank-not-a-number", "cli", lambda d, x: ["resize", x.lora(d), "-o", o(d), "--rank", "four"],
          field="--rank", fix="invalid int value"),
        C("resize/output-is-input", "cli", lambda d, x: ["resize", x.lora(d), "-o", d / "lora.safetensors",
                                                         "--rank", "2"], file="lora.safetensors", fix="--overwrite"),
        C("resize/output-not-safetensors", "cli", lambda d, x: ["resize", x.lora(d), "-o", d / "r.txt", "--rank", "2"],
          file="r.txt", fix=".safetensors"),
        C("convert/output-exists", "cli",
          lambda d, x: ["convert", x.lora(d), _existing(x, d), "--to", "diffusers"], file="out.safetensors",
          fix="--overwrite"),
        C("convert/same-file", "cli", lambda d, x: ["convert", x.lora(d), d / "lora.safetensors"],
          file="lora.safetensors", fix="--overwrite"),
        C("convert/unknown-output-type", "cli", lambda d, x: ["convert", x.lora(d), d / "lora.txt"], file="lora.txt",
          fix=".safetensors"),
        C("convert/folder-not-a-model", "no-file",
          lambda d, x: ["convert", (d / "f").mkdir() or d / "f", d / "m.safetensors"], file="f",
          fix="neither a diffusers model folder"),
        C("merge-loras/bad-weight", "cli",
          lambda d, x: ["merge", "loras", f"{x.lora(d)}:heavy", x.lora(d, "b.safetensors"), "-o", o(d)],
          field="heavy", fix="FILE:WEIGHT"),
        C("merge-loras/svd-without-rank", "cli",
          lambda d, x: ["merge", "loras", x.lora(d), x.lora(d, "b.safetensors"), "--mode", "svd", "-o", o(d)],
          field="--rank", fix="--sv-fro"),
        C("merge-loras/interpolate-three", "cli",
          lambda d, x: ["merge", "loras", x.lora(d), x.lora(d, "b.safetensors"), x.lora(d, "c.safetensors"),
                        "--mode", "interpolate", "-o", o(d)], field="interpolate", fix="two"),
        C("merge-loras/output-exists", "cli",
          lambda d, x: ["merge", "loras", x.lora(d), x.lora(d, "b.safetensors"), "-o", _existing(x, d)],
          file="out.safetensors", fix="--overwrite"),
        C("merge-into-model/bad-scale", "cli",
          lambda d, x: ["merge", "into-model", "--lora", f"{x.lora(d)}:unet=lots", "-o", o(d)], field="lots",
          fix="FILE:0.8"),
        C("merge-into-model/output-exists", "cli",
          lambda d, x: ["merge", "into-model", "--lora", x.lora(d), "-o", _existing(x, d)], file="out.safetensors",
          fix="--overwrite"),
        C("merge-into-model/wrong-family", "no-file",
          lambda d, x: ["merge", "into-model", "--family", "sdxl", "--lora", x.lora(d), "-o", o(d)],
          file="lora.safetensors", fix="SD 1"),
        C("merge-checkpoints/add-difference-without-c", "cli",
          lambda d, x: ["merge", "checkpoints", x.tiny(), x.tiny(), "--mode", "add-difference", "-o", o(d)],
          field="add_difference", fix="third checkpoint C"),
        C("merge-checkpoints/multiplier-nan", "nonfinite",
          lambda d, x: ["merge", "checkpoints", x.tiny(), x.tiny(), "-m", "nan", "-o", o(d)], field="-m",
          fix="number"),
        C("extract/no-rank", "cli", lambda d, x: ["extract", "--tuned", x.tiny(), "-o", o(d)], field="--rank",
          fix="give"),
        C("extract/families-differ", "no-file",
          lambda d, x: ["extract", "--base", x.tiny("sd15"), "--tuned", x.tiny("sdxl"), "-o", o(d), "--rank", "2"],
          field="--tuned", fix="same family"),
        C("extract/min-diff-negative", "cli",
          lambda d, x: ["extract", "--tuned", x.tiny(), "-o", o(d), "--rank", "2", "--min-diff", "-1"],
          field="--min-diff", fix="0 or more"),
        C("sample/width-100", "cli", lambda d, x: [*SAMPLE[:-4], "--width", "100", "--height", "64", "-o", d / "s"],
          field="100", fix="multiples of 8"),
        C("sample/negative-height", "cli",
          lambda d, x: [*SAMPLE[:-4], "--width", "64", "--height", "-8", "-o", d / "s"], field="--height",
          fix="multiple of 8"),
        C("sample/cfg-nan", "nonfinite", lambda d, x: [*SAMPLE, "--cfg", "nan", "-o", d / "s"], field="--cfg",
          fix="number"),
        C("sample/strength-above-1", "cli",
          lambda d, x: [*SAMPLE, "--init-image", x.image(d / "i.png"), "--strength", "1.5", "-o", d / "s"],
          field="--strength", fix="between 0 and 1"),
        C("sample/strength-0", "cli",
          lambda d, x: [*SAMPLE, "--init-image", x.image(d / "i.png"), "--strength", "0", "-o", d / "s"],
          field="--strength", fix="between 0 and 1"),
        C("sample/negative-seed", "cli", lambda d, x: [*SAMPLE, "--seed", "-1", "-o", d / "s"], field="--seed",
          fix="0"),
        C("sample/missing-init-image", "no-file",
          lambda d, x: [*SAMPLE, "--init-image", d / "nope.png", "-o", d / "s"], file="nope.png", field="init"),
        C("sample/init-image-is-text", "no-file",
          lambda d, x: [*SAMPLE, "--init-image", x.text(d / "i.png", "hello"), "-o", d / "s"], file="i.png",
          field="--init-image", fix="PNG"),
        C("sample/prompt-file-not-utf8", "no-file",
          lambda d, x: ["sample", "--prompt-file", x.text(d / "p.txt", "un café", "latin-1"), "-o", d / "s"],
          file="p.txt", fix="UTF-8"),
        C("sample/prompt-file-empty", "no-file",
          lambda d, x: ["sample", "--prompt-file", x.text(d / "p.txt", "# nothing\n\n"), "-o", d / "s"],
          file="p.txt", fix="no prompt"),
        C("sample/prompt-file-is-folder", "no-file",
          lambda d, x: ["sample", "--prompt-file", d, "-o", d / "s"], file=None, fix="folder"),
        C("sample/lora-missing-with-weight", "no-file",
          lambda d, x: [*SAMPLE, "--lora", f"{d / 'gone.safetensors'}:0.5", "-o", d / "s"], file="gone.safetensors",
          fix="no such"),
        C("check/family-mismatch", "no-file", lambda d, x: ["check", x.lora(d), "--family", "sdxl"], rc=1,
          file="lora.safetensors", field="family: sdxl", fix="0/48 modules"),
        C("check/model-is-a-lora", "cli", lambda d, x: ["check", x.lora(d), "--model", x.lora(d, "m.safetensors")],
          field="--model", fix="model_index.json"),
        C("import/missing", "cli", lambda d, x: ["import", d / "cmd.sh"], file="cmd.sh", fix="-"),
        C("import/output-exists", "cli",
          lambda d, x: ["import", x.text(d / "cmd.sh", "accelerate launch train_network.py --network_dim=8\n"),
                        "-o", x.text(d / "run.toml", "# mine\n")], file="run.toml", fix="--overwrite"),
        C("import/not-a-command", "cli", lambda d, x: ["import", x.text(d / "cmd.sh", "hello world\n")],
          file="cmd.sh", fix="train_network.py"),
        C("import/kohya-toml-broken", "cli",
          lambda d, x: ["import", x.text(d / "cfg.toml", "[model_arguments\npretrained = 1\n")], file="cfg.toml",
          fix="TOML"),
        C("doctor/unknown-option", "cli", lambda d, x: ["doctor", "--bogus"], field="--bogus",
          fix="unrecognized arguments"),
        C("cli/unknown-command", "cli", lambda d, x: ["trian"], field="trian", fix="choose from"),
        C("cli/debug-shows-traceback", "cli", lambda d, x: ["inspect", _damaged(x, d, "garbage")], debug=True,
          file="garbage.safetensors"),
    ]


def tool_cases() -> list[C]:
    return _damaged_cases() + _nonfinite_cases() + _kind_cases() + _pickle_cases() + _option_cases()
