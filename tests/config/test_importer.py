"""`loraforge import`: the seed guides' commands (seed-practices.md §16, in tests/config/import_cases) become configs
that load, map each flag to the right key and value, list what they cannot map, and train on the tiny models."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
from PIL import Image

from loraforge.config import ConfigError, load_config, validate_config
from loraforge.config.importer import import_text

CASES = Path(__file__).parent / "import_cases"
ALL = sorted(p for p in CASES.iterdir() if p.suffix in (".sh", ".toml"))


def imported(name: str):
    path = CASES / name
    return import_text(path.read_text(), str(path), path.parent)


def mapped(result) -> dict:
    return {m.key: m.value for m in result.mapped}


def unmapped(result) -> dict:
    return {u.flag: u.reason for u in result.unmapped}


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_every_seed_command_imports_to_a_config_that_loads(tmp_path, path):
    result = import_text(path.read_text(), str(path), path.parent)
    out = tmp_path / "run.toml"
    out.write_text(result.toml())
    cfg = load_config(out)
    assert cfg.model.pretrained_model_name_or_path  # the model named in the command
    for m in result.mapped:  # every mapped value is in the loaded config
        section, key, *entry = m.key.split(".")  # optimizer.optimizer_args.d_coef: an entry of a table
        value = getattr(getattr(cfg, section), key)
        assert (value[entry[0]] if entry else value) == m.value, m
    report = "\n".join(result.report_lines())
    assert "mapped (" in report and "not mapped (" in report and "meaning differs (" in report


def test_kohya_sdxl_locon_seed():
    r = imported("k_sdxl_locon.sh")
    got = mapped(r)
    assert r.tool == "kohya" and r.script == "sdxl_train_network.py"
    assert got["model.family"] == "sdxl"
    assert got["network.algo"] == "locon" and got["network.preset"] == "full"
    assert got["network.rank"] == 8 and got["network.alpha"] == 4.0
    assert got["network.conv_dim"] == 256 and got["network.conv_alpha"] == 4.0
    assert got["network.block_dims"] == [8] * 23 and got["network.block_alphas"] == [0.0625] * 23  # SDXL's 23 blocks
    assert got["network.train_text_encoder"] is True  # kohya trains the text encoders unless told not to
    assert got["dataset.resolution"] == 1024 and got["dataset.bucket_reso_steps"] == 32
    assert got["dataset.min_bucket_reso"] == 256 and got["dataset.max_bucket_reso"] == 1024
    assert got["dataset.caption_extension"] == ".txt" and got["dataset.keep_tokens"] == 1
    assert got["optimizer.type"] == "adamw" and got["optimizer.unet_lr"] == 1e-4
    assert got["training.batch_size"] == 8 and got["training.gradient_accumulation_steps"] == 6
    assert got["training.multires_noise_iterations"] == 10 and got["training.multires_noise_discount"] == 0.1
    assert got["training.mixed_precision"] == "fp16" and got["output.save_precision"] == "fp16"
    assert got["training.save_every_n_epochs"] == 50 and got["sampling.sample_every_n_steps"] == 100
    assert got["output.output_name"] == "xl-locon"
    miss = unmapped(r)
    assert miss["--lowram"].startswith("not needed")
    assert got["training.attention"] == "sdpa"  # --sdpa
    assert "less RAM than VRAM" in miss["--lowram"]
    assert miss["--dataset_repeats=0"].startswith("no equivalent")
    assert got["output.log_prefix"] == "xl-locon"
    assert "accelerate launch --num_cpu_threads_per_process=2" in miss
    differs = "\n".join(r.differences)
    assert "25 equal values (the SD 1.x layout) written as 23" in differs
    assert "kohya trains the text encoder(s) too" in differs


def test_kohya_config_file_toml():
    r = imported("kohya_config.toml")
    got, miss = mapped(r), unmapped(r)
    assert r.tool == "kohya"
    assert got["network.algo"] == "locon" and got["network.preset"] == "full"  # networks.lora with conv_dim
    assert got["network.rank"] == 16 and got["network.alpha"] == 1.0  # kohya's default alpha, written
    assert got["optimizer.type"] == "prodigy"  # "Prodigy"
    assert (got["optimizer.adam_beta1"], got["optimizer.adam_beta2"]) == (0.9, 0.99)  # optimizer_args betas=0.9,0.99
    assert got["optimizer.prodigy_decouple"] is True and got["optimizer.adam_weight_decay"] == 0.01
    assert got["dataset.resolution"] == 512 and got["dataset.random_flip"] is True  # "512,512", flip_aug
    assert got["training.clip_skip"] == 1  # kohya's 2 = the penultimate layer = loraforge's 1
    assert got["training.snr_gamma"] == 5.0 and got["training.num_train_epochs"] == 10
    assert "training.max_train_steps" not in got  # max_train_epochs wins in kohya
    assert "kohya: --max_train_epochs wins" in miss["max_train_steps = 2000"]
    assert got["sampling.sample_sampler"] == "ddim"  # kohya's default with sample prompts
    assert got["optimizer.optimizer_args.d_coef"] == 2 and r.data["optimizer"]["optimizer_args"] == {"d_coef": 2}
    assert got["training.attention"] == "xformers"  # xformers = true
    assert got["output.log_with"] == "wandb" and any("pip install 'loraforge[wandb]'" in n for n in r.notes)
    assert "v2" not in " ".join(miss)  # false flags are simply not given


def test_diffusers_text_to_image_seed():
    r = imported("h_text_to_image_lora.sh")
    got, miss = mapped(r), unmapped(r)
    assert got["model.pretrained_model_name_or_path"] == "runwayml/stable-diffusion-v1-5"  # from `export MODEL_NAME`
    assert got["dataset.instance_dir"] == "./pokemon" and got["dataset.caption_column"] == "text"
    assert got["training.mixed_precision"] == "fp16"  # accelerate launch --mixed_precision="fp16"
    assert got["dataset.center_crop"] is True and got["dataset.random_flip"] is True
    assert got["training.gradient_accumulation_steps"] == 4 and got["training.max_train_steps"] == 1500
    assert got["optimizer.lr_scheduler"] == "cosine" and got["optimizer.lr_warmup_steps"] == 0
    assert got["training.save_every_n_steps"] == 500 and got["training.dataloader_num_workers"] == 8
    assert got["network.rank"] == 4 and got["network.init_lora_weights"] == "gaussian"  # diffusers' defaults
    assert (got["output.output_dir"], got["output.output_name"]) == (".", "sd-pokemon-model-lora")
    assert got["output.log_with"] == "wandb"  # --report_to=wandb
    assert "never samples" in miss["--validation_epochs=10"]  # no --validation_prompt


def test_diffusers_dreambooth_prior_seed():
    r = imported("h_dreambooth_lora_prior.sh")
    got = mapped(r)
    assert got["dataset.with_prior_preservation"] is True and got["dataset.prior_loss_weight"] == 0.5
    assert got["dataset.num_class_images"] == 200 and got["dataset.class_prompt"] == "a photo of a cat"
    assert got["training.batch_size"] == 2 and got["training.save_every_n_steps"] == 100
    assert (got["output.output_dir"], got["output.output_name"]) == ("output", "cat-lora-prior")
    # diffusers pairs instance and class images in every batch: the config batches them the same way, and says so
    assert got["dataset.prior_batches"] == "paired" and validate_config(r.data).dataset.prior_batches == "paired"
    [note] = [d for d in r.differences if d.startswith("--with_prior_preservation")]
    assert 'imported with dataset.prior_batches = "paired"' in note and "as many class images in every batch" in note
    # kohya's regularisation images keep kohya's batching (the default, "mixed")
    k = import_text("python train_network.py --network_module=networks.lora --train_data_dir=img "
                    "--reg_data_dir=reg --prior_loss_weight=0.5")
    assert "dataset.prior_batches" not in mapped(k) and mapped(k)["dataset.reg_data_dir"] == "reg"
    assert validate_config(k.data).dataset.prior_batches == "mixed"
    off = import_text("python train_dreambooth_lora.py --instance_data_dir=x --with_prior_preservation=false")
    assert "dataset.prior_batches" not in mapped(off)


def test_diffusers_sdxl_advanced_seeds():
    r = imported("b_sdxl_advanced_huggy.sh")
    got = mapped(r)
    assert got["model.family"] == "sdxl" and got["model.vae"] == "madebyollin/sdxl-vae-fp16-fix"
    assert got["dataset.dataset_name"] == "./huggy_clean" and got["dataset.caption_column"] == "prompt"
    assert got["training.train_text_encoder_ti"] is True and got["optimizer.text_encoder_lr"] == 3e-4
    assert got["training.seed"] == 0 and got["network.rank"] == 32 and got["training.snr_gamma"] == 5.0
    assert got["dataset.center_crop"] is False  # no --center_crop: diffusers crops at random
    assert got["sampling.validation_prompt"] == "a TOK emoji dressed as Yoda"
    assert got["sampling.sample_every_n_epochs"] == 50  # the script's default, used with a validation prompt
    assert got["optimizer.adam_weight_decay"] == 1e-4  # the SDXL script's default
    p = mapped(imported("b_sdxl_advanced_prodigy.sh"))
    assert p["optimizer.type"] == "prodigy" and p["optimizer.learning_rate"] == 1.0
    assert p["optimizer.adam_beta2"] == 0.99 and p["optimizer.prodigy_safeguard_warmup"] is True
    assert p["training.train_text_encoder_ti_frac"] == 0.5 and p["dataset.num_class_images"] == 150


def test_kohya_flux_command():
    """kohya's FLUX guide's small-GPU command: single files, fp8 base, cached text, raw prediction with a shifted
    sigmoid schedule, block swap; lora_flux's targets are loraforge's FLUX default (no SD preset is written)."""
    r = imported("k_flux_lora.sh")
    got, miss = mapped(r), unmapped(r)
    assert r.script == "flux_train_network.py" and got["model.family"] == "flux"
    assert got["model.clip_l"] == "models/clip_l.safetensors" and got["model.ae"] == "models/ae.safetensors"
    assert got["model.quantize_base"] == "fp8" and got["training.blocks_to_swap"] == 16
    assert got["training.timestep_sampling"] == "sigmoid" and got["training.flow_shift"] == 3.1582
    assert got["model.max_sequence_length"] == 256 and got["training.guidance_scale"] == 1.0
    assert got["network.algo"] == "lora" and "network.preset" not in got
    assert got["network.train_text_encoder"] is False
    assert "padding" in miss["--apply_t5_attn_mask"] and "not needed" in miss["--model_prediction_type=raw"]


@pytest.mark.parametrize("flags,want,unmapped_flag", [
    # kohya's defaults: σ uniform on the schedule shifted by 3.0; guidance 3.5; sigma_scaled prediction not offered
    ("", {"training.timestep_sampling": "uniform", "training.flow_shift": 3.0, "training.guidance_scale": 3.5},
     "--model_prediction_type not given (kohya's default sigma_scaled)"),
    ("--timestep_sampling flux_shift --model_prediction_type raw",
     {"training.timestep_sampling": "sigmoid", "training.flow_resolution_shift": True}, None),
    ("--timestep_sampling sigma --weighting_scheme logit_normal --logit_std 1.5 --model_prediction_type raw",
     {"training.timestep_sampling": "logit_normal", "training.flow_shift": 3.0, "training.logit_std": 1.5}, None),
    ("--timestep_sampling uniform --discrete_flow_shift 2 --model_prediction_type raw",
     {"training.timestep_sampling": "uniform"}, "--discrete_flow_shift=2"),
    ("--timestep_sampling sigmoid --sigmoid_scale 2 --weighting_scheme cosmap",
     {"training.timestep_sampling": "sigmoid", "training.sigmoid_scale": 2.0, "training.weighting_scheme": "cosmap"},
     "--model_prediction_type not given (kohya's default sigma_scaled)"),
])
def test_kohya_flux_timestep_flags_are_translated_together(flags, want, unmapped_flag):
    r = import_text(f"flux_train_network.py --pretrained_model_name_or_path flux1-dev.safetensors "
                    f"--network_module networks.lora_flux --gradient_checkpointing {flags}")
    got = mapped(r)
    for key, value in want.items():
        assert got.get(key) == value, (key, got)
    if "flow_shift" not in str(want):
        assert "training.flow_shift" not in got
    if unmapped_flag:
        assert unmapped_flag in unmapped(r), unmapped(r)
    validate_config(r.data)


def test_diffusers_flux_advanced_command():
    r = import_text("accelerate launch train_dreambooth_lora_flux_advanced.py --pretrained_model_name_or_path "
                    "black-forest-labs/FLUX.1-dev --instance_data_dir dog --instance_prompt 'a TOK dog' "
                    "--train_text_encoder_ti --enable_t5_ti --optimizer prodigy --learning_rate 1.0 "
                    "--weighting_scheme logit_normal --guidance_scale 1 --max_sequence_length 512 --rank 16")
    got = mapped(r)
    assert got["model.family"] == "flux" and got["training.train_t5_ti"] is True
    assert got["training.timestep_sampling"] == "logit_normal" and got["training.guidance_scale"] == 1.0
    assert got["model.max_sequence_length"] == 512 and got["optimizer.adam_weight_decay"] == 1e-4
    validate_config(r.data)


def test_flux_flags_in_an_sd_command_are_listed():
    miss = unmapped(import_text("sdxl_train_network.py --pretrained_model_name_or_path x --timestep_sampling shift"))
    assert "does not train FLUX.1" in miss["--timestep_sampling=shift"]


def test_unknown_and_refused_flags_are_listed_with_the_reason():
    r = import_text("python train_network.py --network_module=networks.lora --frobnicate=3 --network_dim=5000 "
                    "--rank=4 --use_lion_optimizer --optimizer_type=DAdaptAdam extra --max_grad_norm=0")
    miss = unmapped(r)
    assert "not a kohya flag loraforge knows" in miss["--frobnicate=3"]
    assert "not a kohya flag" in miss["--rank=4"]  # a diffusers flag in a kohya command
    assert miss["--network_dim=5000"].startswith("refused by loraforge: network.rank = 5000")
    assert miss["--use_lion_optimizer"].startswith("no equivalent")
    assert "no loraforge optimizer 'DAdaptAdam'" in miss["--optimizer_type=DAdaptAdam"]
    assert "positional" in miss["extra"]
    assert "0 turns clipping off" in miss["--max_grad_norm=0"]
    assert "network.rank" not in mapped(r) and "network.rank" not in str(r.data)  # the refused value is left out
    from loraforge.config import validate_config

    validate_config(r.data)  # and the rest loads


def test_optimizer_args_without_an_option_go_to_optimizer_args():
    r = import_text("python train_network.py --network_module=networks.lora --optimizer_type=prodigy "
                    "--optimizer_args d_coef=2 growth_rate=1.02 eps=1e-7 fancy=(1,2) slice_p=None")
    got, miss = mapped(r), unmapped(r)
    assert r.data["optimizer"]["optimizer_args"] == {"d_coef": 2, "growth_rate": 1.02, "fancy": [1, 2]}
    assert got["optimizer.adam_epsilon"] == 1e-7  # a keyword with an option goes to that option
    assert "leave the keyword out" in miss["--optimizer_args slice_p=None"]
    assert any("--optimizer_args fancy=(1,2): passed to the optimizer as written" in n for n in r.notes)
    assert "[optimizer.optimizer_args]" in r.toml()
    assert validate_config(r.data).optimizer.optimizer_args["growth_rate"] == 1.02


def test_optimizer_class_by_import_path_takes_its_args_as_written():
    r = import_text("python train_network.py --network_module=networks.lora --optimizer_type=torch.optim.AdamW "
                    '--optimizer_args "weight_decay=0.05" "betas=(0.8,0.95)" "amsgrad=True"')
    got = mapped(r)
    assert got["optimizer.type"] == "torch.optim.AdamW"
    assert r.data["optimizer"]["optimizer_args"] == {"betas": [0.8, 0.95], "amsgrad": True}
    assert got["optimizer.adam_weight_decay"] == 0.05 and "optimizer.adam_beta1" not in got
    assert validate_config(r.data).optimizer.type == "torch.optim.AdamW"
    # diffusers knows AdamW and prodigy only: a path there is trained as AdamW, as the script does
    d = import_text("python train_dreambooth_lora.py --pretrained_model_name_or_path=x --instance_data_dir=i "
                    "--instance_prompt=p --optimizer=torch.optim.RAdam")
    assert mapped(d)["optimizer.type"] == "adamw"


def test_logging_flags():
    k = import_text("python train_network.py --network_module=networks.lora --logging_dir=logs/tb --log_prefix=cat_ "
                    "--log_with=all")
    got = mapped(k)
    assert (got["output.logging_dir"], got["output.log_prefix"], got["output.log_with"]) == ("logs/tb", "cat_",
                                                                                               "tensorboard")
    assert any("one tracker at a time" in d for d in k.differences)
    d = import_text("python train_dreambooth_lora.py --pretrained_model_name_or_path=x --instance_data_dir=i "
                    "--instance_prompt=p --output_dir=out --logging_dir=tb --report_to=comet_ml")
    assert mapped(d)["output.logging_dir"] == "out/tb"  # diffusers: inside --output_dir
    assert "not comet_ml" in unmapped(d)["--report_to=comet_ml"]
    d = import_text("python train_dreambooth_lora.py --pretrained_model_name_or_path=x --instance_data_dir=i "
                    "--instance_prompt=p --logging_dir=tb")
    assert "--output_dir, which is not given" in unmapped(d)["--logging_dir=tb"]


def test_shell_forms():
    text = (
        "!MODEL=/models/a.safetensors\n"
        "accelerate launch --multi_gpu --num_processes 2 train_network.py ^\n"
        "  --pretrained_model_name_or_path=\"${MODEL}\" --output_dir $OUT `\n"
        "  --caption_prefix 'a photo, ' # a comment\n"
        "echo done && ls\n"
    )
    r = import_text(text)
    got, miss = mapped(r), unmapped(r)
    assert got["model.pretrained_model_name_or_path"] == "/models/a.safetensors"
    assert got["output.output_dir"] == "$OUT" and any("$OUT is not defined" in n for n in r.notes)
    assert got["dataset.caption_prefix"] == "a photo, "
    assert "accelerate launch --multi_gpu" in miss and "accelerate launch --num_processes=2" in miss


def test_defaults_and_precedence():
    k = mapped(import_text("python train_network.py --network_module networks.lora --max_train_epochs 3"))
    assert k["network.rank"] == 4 and k["network.alpha"] == 1.0 and k["optimizer.learning_rate"] == 2e-6
    assert k["network.algo"] == "lora" and k["network.preset"] == "attn-mlp"  # kohya's LoRA targets
    assert k["dataset.caption_extension"] == ".caption" and k["training.num_train_epochs"] == 3
    assert "training.max_train_steps" not in k  # epochs only: kohya's 1600-step default does not apply
    assert mapped(import_text("python train_network.py"))["training.max_train_steps"] == 1600
    d = import_text("accelerate launch train_text_to_image_lora.py --num_train_epochs=5 --max_train_steps=10 "
                    "--checkpointing_steps=4 --checkpoints_total_limit=2 --output_dir=/runs/x/")
    got = mapped(d)
    assert got["training.max_train_steps"] == 10 and "training.num_train_epochs" not in got
    assert "overrides --num_train_epochs" in unmapped(d)["--num_train_epochs=5"]
    assert got["training.save_last_n_steps"] == 8  # 2 checkpoints × 4 steps
    assert (got["output.output_dir"], got["output.output_name"]) == ("/runs", "x")
    u = mapped(import_text("python train_network.py --network_train_unet_only --text_encoder_lr 1e-4 5e-5"))
    assert u["network.train_text_encoder"] is False and "optimizer.text_encoder_lr" not in u
    w = mapped(import_text("python train_network.py --max_train_steps=200 --lr_warmup_steps=0.1"))
    assert w["optimizer.lr_warmup_steps"] == 20  # kohya's ratio form


def test_input_that_is_not_a_command():
    with pytest.raises(ConfigError, match="train_dreambooth.py is not a training script loraforge can import"):
        import_text("accelerate launch train_dreambooth.py --foo", "cmd.sh")
    with pytest.raises(ConfigError, match="cmd.sh: no training command found"):
        import_text("echo hello", "cmd.sh")
    with pytest.raises(ConfigError, match="is a kohya dataset config.*dataset.config_file"):
        import_text("[general]\nshuffle_caption = true\n[[datasets]]\nresolution = 512\n", "data.toml")


def test_config_file_next_to_the_command(tmp_path):
    (tmp_path / "args.toml").write_text('[a]\nnetwork_dim = 32\nlearning_rate = 3e-4\n')
    r = import_text("python sdxl_train_network.py --config_file args.toml --learning_rate=1e-4", "cmd.sh", tmp_path)
    got = mapped(r)
    assert got["network.rank"] == 32 and got["optimizer.learning_rate"] == 1e-4  # the command line wins
    r = import_text("python sdxl_train_network.py --config_file missing.toml", "cmd.sh", tmp_path)
    assert "cannot read it" in unmapped(r)["--config_file=missing.toml"]


def _cli(*args, stdin=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "loraforge", *args], capture_output=True, text=True, input=stdin,
                          cwd=cwd)


def test_cli_writes_atomically_refuses_to_overwrite_and_prints_to_stdout(tmp_path):
    case = CASES / "h_dreambooth_lora.sh"
    out = tmp_path / "run.toml"
    first = _cli("import", str(case), "-o", str(out))
    assert first.returncode == 0, first.stderr
    assert "mapped (" in first.stdout and f"wrote {out}" in first.stdout
    assert load_config(out).dataset.instance_prompt == "a photo of sks cat"
    out.write_text("mine")
    again = _cli("import", str(case), "-o", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr and out.read_text() == "mine"
    assert _cli("import", str(case), "-o", str(out), "--overwrite").returncode == 0
    assert "[dataset]" in out.read_text()
    piped = _cli("import", "-", stdin=case.read_text())
    assert piped.returncode == 0 and piped.stdout.lstrip().startswith("# Imported")
    assert "[network]" in piped.stdout and "not mapped (" in piped.stderr
    bad = _cli("import", "-", stdin="echo nothing\n")
    assert bad.returncode == 2 and "no training command found" in bad.stderr and "Traceback" not in bad.stderr
    missing = _cli("import", str(tmp_path / "nope.sh"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_version():
    from loraforge import __version__

    proc = _cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"loraforge {__version__}"


# ------------------------------------------------------------------------------------------------------- training
def _images(folder: Path, n: int = 3, caption: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (64, 64), (60 * i, 120, 200 - 50 * i)).save(folder / f"{i}.png")
        if caption:
            (folder / f"{i}.txt").write_text(caption)
    return folder


def _on_tiny_model(result, tmp_path, family: str, **overrides):
    """The imported config with the model replaced by the embedded tiny one and a 2-step, 64 px run."""
    data = copy.deepcopy(result.data)
    data["model"].pop("pretrained_model_name_or_path")
    data["model"]["family"] = family
    settings = {"training.max_train_steps": 2, "dataset.resolution": 64, "training.mixed_precision": "no",
                "training.dataloader_num_workers": 0,
                "output.output_dir": str(tmp_path / "out"), "output.log_with": "none", "sampling.at_end": False,
                **overrides}
    for key, value in settings.items():
        section, _, name = key.partition(".")
        data.setdefault(section, {})[name] = value
    path = tmp_path / "tiny.toml"
    path.write_text(tomli_w.dumps(data))
    return load_config(path)


def test_kohya_seed_trains_on_the_tiny_sdxl(tmp_path, tiny_dirs):
    from loraforge.training.trainer import Trainer

    result = imported("k_sdxl_locon.sh")
    _images(tmp_path / "img" / "2_sks robot", caption="sks robot, red, toy")
    cfg = _on_tiny_model(result, tmp_path, "sdxl", **{
        "dataset.train_data_dir": str(tmp_path / "img"), "dataset.min_bucket_reso": 32,
        "dataset.max_bucket_reso": 128, "training.batch_size": 1, "training.gradient_accumulation_steps": 1,
        "network.conv_dim": 8,  # the guide's 256 exceeds the tiny model's channels and triples the run time
    })
    assert (cfg.network.algo, cfg.network.preset, cfg.network.block_dims, cfg.network.train_text_encoder) == (
        "locon", "full", [8] * 23, True)
    assert cfg.training.multires_noise_iterations == 10 and cfg.dataset.cache_latents_to_disk
    run = Trainer(cfg).run()
    assert run.steps == 2 and run.files.kohya.is_file() and all(loss == loss for loss in run.losses)


def test_diffusers_seed_trains_on_the_tiny_sd15(tmp_path, tiny_dirs):
    from loraforge.training.trainer import Trainer

    result = imported("h_dreambooth_lora.sh")
    cfg = _on_tiny_model(result, tmp_path, "sd15", **{"dataset.instance_dir": str(_images(tmp_path / "cat"))})
    assert (cfg.network.rank, cfg.network.init_lora_weights, cfg.training.gradient_accumulation_steps) == (
        4, "gaussian", 4)
    run = Trainer(cfg).run()
    assert run.steps == 2 and run.files.diffusers.is_file() and all(loss == loss for loss in run.losses)


def test_max_token_length_maps_to_chunked_prompts():
    r = import_text("python sdxl_train_network.py --max_token_length=225")
    assert mapped(r)["dataset.max_token_length"] == 225
    assert load_config(None, [f"dataset.max_token_length={r.data['dataset']['max_token_length']}"])
    miss = unmapped(import_text("python train_network.py --max_token_length=100"))
    assert "dataset.max_token_length" in miss["--max_token_length=100"] and "150" in miss["--max_token_length=100"]


def test_color_aug_and_face_crop_map():
    r = import_text("python train_network.py --color_aug --face_crop_aug_range=2.0,4.0")
    assert mapped(r)["dataset.color_aug"] is True
    assert mapped(r)["dataset.face_crop_aug_range"] == [2.0, 4.0]
    assert load_config(None, ["dataset.face_crop_aug_range=[2.0, 4.0]"])
    # kohya ignores the face box with buckets or cached latents; loraforge refuses those, so the import drops it.
    for flag in ("--enable_bucket", "--cache_latents"):
        r = import_text(f"python train_network.py --face_crop_aug_range 2.0,4.0 {flag}")
        assert "dataset.face_crop_aug_range" not in mapped(r)
        assert f"does not crop around the face with {flag}" in unmapped(r)["--face_crop_aug_range=2.0,4.0"]


def test_kohya_width_height_resolution_maps_to_a_pair(tmp_path):
    r = import_text("python train_network.py --resolution 512,768")
    assert mapped(r)["dataset.resolution"] == [512, 768]  # kohya's "W,H"
    assert validate_config(r.data).dataset.size == (512, 768)
    assert mapped(import_text("python train_network.py --resolution=640,640"))["dataset.resolution"] == 640
    (tmp_path / "args.toml").write_text('[a]\nresolution = "768,512"\n')  # a kohya --config_file
    r = import_text("python train_network.py --config_file args.toml", "cmd.sh", tmp_path)
    assert mapped(r)["dataset.resolution"] == [768, 512]
    # diffusers' scripts take one number (argparse type=int): a pair is not theirs
    d = import_text("accelerate launch train_text_to_image_lora.py --resolution=512,768")
    assert "dataset.resolution" not in mapped(d) and "whole number" in unmapped(d)["--resolution=512,768"]


def test_kohya_torch_compile_and_dynamo_backend():
    r = import_text("python sdxl_train_network.py --torch_compile --dynamo_backend=inductor")
    assert mapped(r)["training.torch_compile"] is True
    assert any("regional compilation" in d for d in r.differences)  # kohya compiles the whole U-Net
    assert unmapped(r)["--dynamo_backend=inductor"].startswith("not needed")
    validate_config(r.data)
    other = import_text("python sdxl_train_network.py --torch_compile --dynamo_backend eager")
    miss = next(reason for flag, reason in unmapped(other).items() if flag.startswith("--dynamo_backend"))
    assert miss.startswith("no equivalent") and "'eager'" in miss
    assert "torch_compile" not in import_text("python train_network.py --torch_compile=false").data["training"]
