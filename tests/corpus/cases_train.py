"""Corpus cases of `loraforge train`: a diverging run, run folders that hold another run or a checkpoint that does
not fit, everything found before the first step (with and without --dry-run), and config files and values."""

from __future__ import annotations

import json
from pathlib import Path

from .runner import Case as C

# a run that starts and then fails keeps its log, its metrics.jsonl (ending with a "failed" line) and its report
RUN_LOG = ("out/*/train.log", "out/*/logs/*", "out/*/metrics.jsonl", "out/*/report.html")


# ------------------------------------------------------------------------------------------------------- item 1
def _nonfinite_cases() -> list[C]:
    cases = [
        C("train/lr-1e6-diverges", "nonfinite",
          lambda d, x: x.train(d, "optimizer.learning_rate=1e6", "training.max_train_steps=3", name="nan"),
          field="optimizer.learning_rate", fix="training.no_half_vae = true",
          also=("step 2", "is kept and resumable"), new_ok=(*RUN_LOG, "out/nan/checkpoints/step-000001/*")),
        C("train/on-nonfinite-typo", "nonfinite",
          lambda d, x: [*x.train(d, "training.on_nonfinite='ignore'"), "--dry-run"], field="training.on_nonfinite",
          fix="'skip'"),
    ]
    for key in ("optimizer.learning_rate=nan", "optimizer.learning_rate=inf", "network.alpha=nan",
                "training.snr_gamma=nan", "training.noise_offset=inf", "optimizer.max_grad_norm=nan",
                "dataset.caption_dropout_rate=nan", "dataset.prior_loss_weight=inf", "optimizer.adam_epsilon=nan"):
        field, value = key.split("=")
        cases.append(C(f"config/{field}-{value}", "nonfinite",
                       lambda d, x, key=key: [*x.train(d, key), "--dry-run"], field=field, fix="finite"))
    return cases


# ------------------------------------------------------------------------------------------------------- item 2
def _edit_state(ckpt: Path, **changes) -> None:
    state = ckpt / "train_state.json"
    data = json.loads(state.read_text())
    data.update(changes)
    state.write_text(json.dumps(data))


def _foreign_resume(d: Path, x) -> list[str]:
    """Resume a checkpoint of run `base` into the folder `other`, which holds checkpoints of yet another run."""
    x.copy_run(d, interrupted=True)
    other = d / "out" / "other" / "checkpoints" / "step-000001"
    other.parent.mkdir(parents=True)
    import shutil

    shutil.copytree(d / "out" / "base" / "checkpoints" / "step-000001", other)
    _edit_state(other, run_id="another-run")
    return x.train(d, f"training.resume={str(d / 'out' / 'base' / 'checkpoints' / 'step-000002')!r}",
                   "training.max_train_steps=3", name="other")


def _damaged_checkpoint(d: Path, x, what: str) -> list[str]:
    ckpt = x.checkpoint(d)
    if what == "state-truncated":
        (ckpt / "train_state.json").write_text('{"step": 2, "run_')
    elif what == "network-missing":
        (ckpt / "network.safetensors").unlink()
    elif what == "network-truncated":
        (ckpt / "network.safetensors").write_bytes((ckpt / "network.safetensors").read_bytes()[:100])
    elif what == "optimizer-truncated":
        (ckpt / "optimizer.bin").write_bytes((ckpt / "optimizer.bin").read_bytes()[:100])
    elif what == "config-missing":  # as an older loraforge wrote it: no config, no manifest
        (ckpt / "config.toml").unlink()
        (ckpt / "manifest.json").unlink()
        return x.train(d, "training.resume='latest'", "training.max_train_steps=3")
    # named explicitly: refused (with "latest" the damaged one is skipped with a warning: tests/training/test_manifest)
    return x.train(d, f"training.resume={str(ckpt)!r}", "training.max_train_steps=3")


def _run_folder_cases() -> list[C]:
    latest = ("training.resume='latest'", "training.max_train_steps=3")
    return [
        C("train/fresh-start-over-checkpoints", "run-folder",
          lambda d, x: (x.copy_run(d, interrupted=True), x.train(d))[1], file="base",
          field='training.resume = "latest"', fix="output.overwrite = true"),
        C("train/fresh-start-over-finished-run", "run-folder", lambda d, x: (x.copy_run(d), x.train(d))[1],
          file="base", field="output.overwrite", fix="output_name"),
        C("train/dry-run-over-finished-run", "run-folder",
          lambda d, x: (x.copy_run(d), [*x.train(d), "--dry-run"])[1], file="base", field="output.overwrite",
          fix="output_name"),
        C("train/resume-changed-rank", "run-folder",
          lambda d, x: (x.checkpoint(d), x.train(d, *latest, "network.rank=8"))[1], file="step-000002",
          field="network.rank", fix="4", also=("8",)),
        C("train/resume-changed-algo", "run-folder",
          lambda d, x: (x.checkpoint(d), x.train(d, *latest, "network.algo='loha'"))[1], file="step-000002",
          field="network.algo", fix="lora"),
        C("train/resume-changed-data", "run-folder",
          lambda d, x: (x.checkpoint(d), x.train(d, *latest, *x.data_args(x.images(d / "other-data"))[1::2]))[1],
          file="step-000002", field="dataset.instance_dir", fix="other-data"),
        C("train/resume-changed-seed", "run-folder",
          lambda d, x: (x.checkpoint(d), x.train(d, *latest, "training.seed=7"))[1], file="step-000002",
          field="training.seed", fix="7"),
        C("train/resume-another-runs-checkpoint", "run-folder", _foreign_resume, file="other",
          field="another run", fix="another output.output_name"),
        C("train/resume-latest-no-checkpoint", "run-folder", lambda d, x: x.train(d, *latest), field="training.resume",
          fix="checkpoint"),
        C("train/resume-not-a-checkpoint", "run-folder",
          lambda d, x: x.train(d, f"training.resume={str((d / 'empty').mkdir() or d / 'empty')!r}"),
          file="empty", field="training.resume", fix="step-"),
        C("train/resume-state-truncated", "run-folder", lambda d, x: _damaged_checkpoint(d, x, "state-truncated"),
          file="train_state.json", field="training.resume", fix="step-000001"),
        C("train/resume-network-missing", "run-folder", lambda d, x: _damaged_checkpoint(d, x, "network-missing"),
          file="network.safetensors", field="training.resume", fix="step-000001", new_ok=RUN_LOG),
        C("train/resume-network-truncated", "run-folder", lambda d, x: _damaged_checkpoint(d, x, "network-truncated"),
          file="network.safetensors", field="training.resume", fix="step-000001", new_ok=RUN_LOG),
        C("train/resume-optimizer-truncated", "run-folder",
          lambda d, x: _damaged_checkpoint(d, x, "optimizer-truncated"), file="optimizer.bin",
          field="training.resume", fix="step-000001", new_ok=RUN_LOG),
        # a checkpoint of an older loraforge has no config: the resume goes on and says it cannot compare
        C("train/resume-config-missing", "run-folder", lambda d, x: _damaged_checkpoint(d, x, "config-missing"),
          rc=0, file="config.toml", fix="the config cannot be compared"),
        C("train/resume-past-the-end", "run-folder",
          lambda d, x: (x.checkpoint(d), x.train(d, "training.resume='latest'", "training.max_train_steps=1"))[1],
          file="step-000002", field="training.max_train_steps", fix="2", new_ok=RUN_LOG),
    ]


# ------------------------------------------------------------------------------------------------------- item 6
def _partial_checkpoint(d: Path, x) -> list[str]:
    """An interrupted run whose last checkpoint was cut off while it was written (no train_state.json yet)."""
    ckpt = x.checkpoint(d)
    partial = ckpt.parent / "step-000003"
    partial.mkdir()
    (partial / "network.safetensors").write_bytes((ckpt / "network.safetensors").read_bytes()[:64])
    return x.train(d, "training.resume='latest'", "training.max_train_steps=3")


def _fault_cases() -> list[C]:
    """What already holds when a run is cut short (the kill test and the save-time faults are elsewhere)."""
    return [
        C("faults/interrupted-run-resumes", "faults",
          lambda d, x: (x.checkpoint(d), x.train(d, "training.resume='latest'", "training.max_train_steps=3"))[1],
          rc=0, file="base", also=("done: 3 steps",)),
        C("faults/partial-checkpoint-is-not-resumed", "faults", _partial_checkpoint, rc=0,
          also=("step-000002", "done: 3 steps")),
        C("faults/sample-into-a-file", "faults",
          lambda d, x: ["sample", "--prompt", "a cat", "--steps", "1", "-o", x.text(d / "afile", "") / "s"],
          file="afile", fix="not a folder"),
        C("faults/merge-into-a-file", "faults",
          lambda d, x: ["merge", "loras", x.lora(d), x.lora(d, "b.safetensors"), "-o",
                        x.text(d / "afile", "") / "m.safetensors"], file="afile", fix="choose another output"),
    ]


# ------------------------------------------------------------------------------------------------------- item 3
def _preflight_cases() -> list[C]:
    """Each is refused before the first step, by --dry-run and by train alike (the two alternate here; the preflight
    test runs its cases both ways)."""
    def P(name, sets, file=None, field=None, fix=None, dry=True, **kw):  # noqa: N802
        def argv(d, x):
            values = [s(d, x) if callable(s) else s for s in sets]
            return [*x.train(d, *values), *(["--dry-run"] if dry else [])]
        return C(f"preflight/{name}{'' if dry else '-train'}", "preflight", argv, file=file, field=field, fix=fix,
                 **kw)

    prompts = lambda text, enc="utf-8": lambda d, x: (  # noqa: E731
        f"sampling.sample_prompts={str(x.text(d / 'prompts.txt', text, enc))!r}")
    return [
        P("sample-width-100", ["sampling.width=100"], field="sampling.width", fix="try 96 or 104"),
        P("seed-negative", ["training.seed=-1"], field="training.seed", fix=">= 0", dry=False),
        P("seed-2-32", ["training.seed=4294967296"], field="training.seed", fix="<= 4294967295"),
        P("prompt-file-missing", [lambda d, x: f"sampling.sample_prompts={str(d / 'none.txt')!r}"], file="none.txt",
          field="sampling.sample_prompts", dry=False),
        P("prompt-file-width", [prompts("a cat --w 100\n")], file="prompts.txt:1", field="width 100",
          fix="multiple of 8"),
        P("prompt-file-not-utf8", [prompts("un café --w 64\n", "latin-1")], file="prompts.txt", fix="UTF-8",
          dry=False),
        P("prompt-file-steps-0", [prompts("a cat --s 0\n")], file="prompts.txt", field="--s", fix="1 or more"),
        P("prompt-file-bad-cfg", [prompts("a cat --l lots\n")], file="prompts.txt:1", field="--l", fix="number"),
        P("prompt-file-is-folder", [lambda d, x: f"sampling.sample_prompts={str(d)!r}"],
          field="sampling.sample_prompts", fix="folder"),
        P("sampler-unknown", ["sampling.sample_sampler='nope'"], field="sampling.sample_sampler", fix="euler_a"),
        P("sample-steps-0", ["sampling.num_inference_steps=0"], field="sampling.num_inference_steps", fix=">= 1"),
        P("model-folder-missing", [lambda d, x: f"model.pretrained_model_name_or_path={str(d / 'sd')!r}"],
          field="model.pretrained_model_name_or_path", fix="no such file or folder"),
        P("model-is-a-lora", [lambda d, x: f"model.pretrained_model_name_or_path={str(x.lora(d))!r}"],
          file="lora.safetensors", field="model.pretrained_model_name_or_path", fix="give the base model here"),
        P("model-is-a-lora", [lambda d, x: f"model.pretrained_model_name_or_path={str(x.lora(d))!r}"],
          file="lora.safetensors", field="model.pretrained_model_name_or_path", fix="give the base model here",
          dry=False),
        P("model-is-an-embedding", [lambda d, x: f"model.pretrained_model_name_or_path={str(x.embedding(d))!r}"],
          file="emb.safetensors", field="model.pretrained_model_name_or_path", fix="embedding"),
        P("model-folder-without-index", [lambda d, x: f"model.pretrained_model_name_or_path={str(d)!r}"],
          field="model.pretrained_model_name_or_path", fix="model_index.json"),
        P("model-file-empty",
          [lambda d, x: f"model.pretrained_model_name_or_path={str(x.raw(d, 'm.safetensors', b''))!r}"],
          file="m.safetensors", field="model.pretrained_model_name_or_path"),
        P("model-pickle", [lambda d, x: f"model.pretrained_model_name_or_path={str(x.pickle(d, 'm.ckpt'))!r}"],
          file="m.ckpt", fix="allow_pickle"),
        P("vae-missing", [lambda d, x: f"model.vae={str(d / 'vae.safetensors')!r}"], file="vae.safetensors",
          field="model.vae", dry=False),
        P("vae-is-a-lora", [lambda d, x: f"model.vae={str(x.lora(d))!r}"], file="lora.safetensors",
          field="model.vae", fix="VAE"),
        P("resume-folder-missing", [lambda d, x: f"training.resume={str(d / 'ckpt')!r}"], file="ckpt",
          field="training.resume"),
        P("output-under-a-file", [lambda d, x: f"output.output_dir={str(x.text(d / 'a-file', '') / 'out')!r}"],
          file="a-file", field="output.output_dir", fix="is a file", dry=False),
        P("output-name-with-slash", ["output.output_name='a/b'"], field="output.output_name", fix="/"),
        P("output-name-dot-dot", ["output.output_name='..'"], field="output.output_name", fix=".."),
        P("output-name-empty", ["output.output_name=''"], field="output.output_name", fix="name"),
    ]


# ------------------------------------------------------------------------------------------------------- config
def _config_file_cases() -> list[C]:
    def cfg(name, text, file_fix, field=None, fix=None, encoding="utf-8"):
        def argv(d, x):
            return ["train", x.text(d / "run.toml", text, encoding), "--dry-run"]
        return C(f"config/{name}", "config", argv, file="run.toml", field=field, fix=fix or file_fix)

    return [
        cfg("key-typo", "[network]\nrnak = 4\n", None, field="rnak", fix="'rank'"),
        cfg("section-typo", "[netwrok]\nrank = 4\n", None, field="netwrok", fix="did you mean [network]"),
        cfg("kohya-key", "[network]\nnetwork_dim = 8\n", None, field="network_dim", fix="'rank'"),
        cfg("key-in-wrong-section", "[training]\nlearning_rate = 1e-4\n", None, field="learning_rate",
            fix="optimizer.learning_rate"),
        cfg("wrong-type", "[network]\nrank = \"four\"\n", None, field="network.rank", fix="integer"),
        cfg("toml-syntax", "[network\nrank = 4\n", "not valid TOML"),
        cfg("not-utf8", "[dataset]\ninstance_prompt = \"un café\"\n", "UTF-8", encoding="latin-1"),
        cfg("top-level-key", "rank = 4\n", None, field="rank", fix="network"),
        cfg("section-is-a-value", "network = 4\n", None, field="network", fix="is a section"),
        C("config/file-is-a-folder", "config", lambda d, x: ["train", d, "--dry-run"], file=None, fix="folder"),
        C("config/file-missing", "config", lambda d, x: ["train", d / "nope.toml", "--dry-run"], file="nope.toml",
          fix="no such config file"),
    ]


def _config_value_cases() -> list[C]:
    def V(name, *values, field=None, fix=None, **kw):  # noqa: N802
        key = values[0].split("=")[0]
        return C(f"config/{name}", "config", lambda d, x: [*x.train(d, *values), "--dry-run"], field=field or key,
                 fix=fix, **kw)

    return [
        V("set-without-equals", "training.max_train_steps", field="training.max_train_steps", fix="section.key=value"),
        V("set-unknown-section", "trainin.seed=1", field="trainin", fix="did you mean [training]"),
        V("lr-negative", "optimizer.learning_rate=-1e-4", fix="> 0"),
        V("rank-0", "network.rank=0", fix=">= 1"),
        V("rank-huge", "network.rank=100000", fix="<= 1024"),
        V("resolution-100", "dataset.resolution=100", fix="try 96"),
        V("resolution-0", "dataset.resolution=0", fix=">= 64"),
        V("batch-size-0", "training.batch_size=0", fix=">= 1"),
        V("grad-accum-0", "training.gradient_accumulation_steps=0", fix=">= 1"),
        V("max-steps-negative", "training.max_train_steps=-1", fix=">= 1"),
        V("warmup-negative", "optimizer.lr_warmup_steps=-1", fix=">= 0"),
        V("scheduler-unknown", "optimizer.lr_scheduler='cosine_annealing'", fix="cosine_with_restarts"),
        V("mixed-precision-fp8", "training.mixed_precision='fp8'", fix="bf16"),
        V("save-precision-int8", "output.save_precision='int8'", fix="fp16"),
        V("preset-unknown", "preset='portrait'", fix="face"),
        V("network-preset-unknown", "network.preset='everything'", fix="attn-mlp"),
        V("algo-unknown", "network.algo='lorax'", fix="loha"),
        V("block-dims-length", "network.block_dims=[4, 4]", fix="25"),
        V("dropout-above-1", "network.dropout=1.5", fix="< 1"),
        V("caption-dropout-2", "dataset.caption_dropout_rate=2", fix="<= 1"),
        V("ti-and-te", "training.train_text_encoder_ti=true", "network.train_text_encoder=true",
          field="network.train_text_encoder", fix="train_text_encoder_ti"),
        V("te-cache-with-te-training", "dataset.cache_text_encoder_outputs=true", "network.train_text_encoder=true",
          field="cache_text_encoder_outputs", fix="train_text_encoder"),
        V("prior-without-class-dir", "dataset.with_prior_preservation=true", field="dataset.class_data_dir"),
        V("dataset-config-missing", "dataset.config_file='nope.toml'", field="dataset.config_file", fix="nope.toml"),
        V("rank-bare-word", "network.rank=four", fix="integer"),
    ]


def train_cases() -> list[C]:
    return (_nonfinite_cases() + _run_folder_cases() + _fault_cases() + _preflight_cases() + _config_file_cases()
            + _config_value_cases())
