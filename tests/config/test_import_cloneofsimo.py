"""`loraforge import` of cloneofsimo/lora commands: the README's `lora_pti` pivotal-tuning command (python-fire flags)
and a `train_lora_dreambooth.py` command become configs with the right keys that train on the tiny SD 1.5; the config
hints know cloneofsimo's flag names."""

import pytest

from loraforge.config import ConfigError, load_config
from loraforge.config.importer import import_text

from .test_importer import CASES, _images, _on_tiny_model, imported, mapped, unmapped


def differences(result) -> str:
    return "\n".join(result.differences)


def test_readme_lora_pti_command():
    r = imported("c_lora_pti.sh")
    assert (r.tool, r.script) == ("cloneofsimo", "lora_pti")
    m = mapped(r)
    # the two phases: 1000 inversion steps, then 1000 LoRA steps, in one run
    assert m["training.train_text_encoder_ti"] is True and m["training.ti_steps"] == 1000
    assert m["training.max_train_steps"] == 2000
    assert m["training.token_names"] == ["<s1>", "<s2>"]
    # --scale_lr: every rate × train_batch_size 1 × gradient_accumulation_steps 4
    assert (m["optimizer.unet_lr"], m["optimizer.text_encoder_lr"], m["optimizer.embedding_lr"]) == pytest.approx(
        (4e-4, 4e-5, 2e-3))
    assert "× gradient_accumulation_steps = 1 × 4" in differences(r)
    assert (m["network.rank"], m["network.train_text_encoder"]) == (1, True) and "network.alpha" not in m
    assert m["network.target_modules"] == ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj"]  # + GEGLU
    assert m["dataset.instance_prompt"] == "a painting in the style of TOK"  # --use_template="style"
    assert (m["optimizer.adam_weight_decay"], m["optimizer.adam_weight_decay_text_encoder"]) == (0.001, 0.0)
    assert (m["training.save_every_n_steps"], m["optimizer.lr_scheduler"], m["dataset.cache_latents"]) == (
        100, "linear", True)
    assert (m["output.output_dir"], m["output.output_name"]) == ("exps", "output_dsn")
    assert m["training.mixed_precision"] == "no"  # lora_pti trains in fp32
    miss = unmapped(r)
    assert "no masked loss" in miss["--use_face_segmentation_condition"]
    assert "training.ti_steps" in miss["--continue_inversion"]
    assert "--clip_ti_decay" in miss and "--device=cuda:0" in miss
    # --color_jitter with cached latents (lora_pti's default): loraforge refuses colour augmentation there
    assert "dataset.color_aug" not in m and "cache_latents" in miss["--color_jitter"]
    assert "1000 + 1000 = 2000" in differences(r)
    # the README's other spelling: --use_template="object"
    obj = import_text((CASES / "c_lora_pti.sh").read_text().replace('"style"', '"object"'))
    assert mapped(obj)["dataset.instance_prompt"] == "a photo of a TOK"


def test_fire_flag_forms_and_token_options():
    r = import_text(
        "lora_pti --instance_data_dir data --pretrained_model_name_or_path m --output_dir out "
        "--placeholder_tokens '<krk>' --initializer_tokens 'woman|girl' --placeholder_token_at_data '<X>|<krk>' "
        "--lora_unet_target_modules='{\"CrossAttention\", \"FeedForward\"}' --lora_clip_target_modules CLIPMLP "
        "--lora_rank 8 --lora_scale 0.5 --max_train_steps_ti 10 --max_train_steps_tuning 300 --nocached_latents "
        "--log_wandb --train_batch_size=2 --gradient_accumulation_steps=1")
    m = mapped(r)
    assert (m["training.ti_steps"], m["training.max_train_steps"]) == (10, 310)
    assert m["training.token_names"] == ["<krk>"] and m["training.token_abstraction"] == "<X>"
    assert m["training.initializer_token"] == "woman" and "the first is used" in differences(r)
    assert m["network.target_modules"] == ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]
    assert m["network.text_encoder_target_modules"] == ["fc1", "fc2"]
    assert (m["network.rank"], m["network.alpha"]) == (8, 4.0)  # lora_scale × rank
    assert m["dataset.cache_latents"] is False and m["dataset.color_aug"] is True  # --nocached_latents: fire's False
    assert m["output.log_with"] == "wandb" and m["training.batch_size"] == 2
    assert "'<X>' where the tokens go" in "\n".join(r.notes)  # captions from file names: write .txt captions


def test_without_inversion_the_lora_trains_alone():
    for switch in ("--perform_inversion=False", "--noperform_inversion", "--perform_inversion False"):
        r = import_text(f"lora_pti --instance_data_dir d --pretrained_model_name_or_path m --output_dir o {switch} "
                        "--placeholder_tokens='<s1>|<s2>' --max_train_steps_ti=500 --max_train_steps_tuning=700")
        m = mapped(r)
        assert m["training.max_train_steps"] == 700 and m["training.train_text_encoder_ti"] is False, switch
        assert "training.ti_steps" not in m and "training.token_names" not in m
        assert "no inversion phase" in unmapped(r)["--max_train_steps_ti=500"]
        assert "no inversion phase" in unmapped(r)["--placeholder_tokens=<s1>|<s2>"]
    # no --placeholder_tokens: lora_pti's inversion has nothing to learn
    r = import_text("lora_pti --instance_data_dir d --pretrained_model_name_or_path m --output_dir o")
    assert mapped(r)["training.max_train_steps"] == 1000 and "training.ti_steps" not in mapped(r)
    assert "no token to learn" in unmapped(r)["--perform_inversion=True (lora_pti's default)"]


def test_train_lora_dreambooth_command():
    r = imported("c_lora_dreambooth.sh")  # accelerate launch train_lora_dreambooth.py ...
    assert (r.tool, r.script) == ("cloneofsimo", "train_lora_dreambooth.py")
    m = mapped(r)
    assert (m["optimizer.learning_rate"], m["optimizer.text_encoder_lr"]) == (1e-4, 5e-5)
    assert (m["dataset.instance_prompt"], m["dataset.color_aug"], m["network.train_text_encoder"]) == (
        "game character bnha", True, True)
    assert (m["training.max_train_steps"], m["network.rank"], m["training.save_every_n_steps"]) == (10000, 4, 500)
    assert "training.ti_steps" not in m and "training.mixed_precision" not in m
    assert "lora_pti accumulates" not in differences(r)  # lora_pti's notes stay lora_pti's
    assert "draws a random seed" in differences(r)
    r = import_text("python training_scripts/train_lora_dreambooth.py --pretrained_model_name_or_path m "
                    "--instance_data_dir d --instance_prompt 'sks dog' --with_prior_preservation "
                    "--class_data_dir c --class_prompt dog --use_xformers --resume_unet old.pt --scale_lr "
                    "--learning_rate 1e-4 --train_batch_size 2 --gradient_accumulation_steps 3")
    m = mapped(r)
    assert (m["dataset.with_prior_preservation"], m["dataset.prior_batches"]) == (True, "paired")
    assert m["training.attention"] == "xformers" and m["optimizer.learning_rate"] == pytest.approx(6e-4)
    assert "existing LoRA file" in unmapped(r)["--resume_unet=old.pt"]


def test_lora_pti_command_trains_on_the_tiny_sd15(tmp_path, tiny_dirs):
    from loraforge.training.trainer import Trainer

    result = imported("c_lora_pti.sh")
    cfg = _on_tiny_model(result, tmp_path, "sd15", **{
        "dataset.instance_dir": str(_images(tmp_path / "imgs")),  # no captions: the template prompt
        "training.max_train_steps": 3, "training.ti_steps": 1, "training.gradient_accumulation_steps": 1,
        "training.save_every_n_steps": 1000})
    assert (cfg.training.train_text_encoder_ti, cfg.training.token_names, cfg.network.train_text_encoder) == (
        True, ["<s1>", "<s2>"], True)
    t = Trainer(cfg)
    t.prepare()
    assert t.pivotal.tokens == ["<s1>", "<s2>"]
    assert t.dataset.caption(0) == "a painting in the style of <s1><s2>"
    t.train()
    run = t.finish()
    assert run.steps == 3 and run.files.kohya.is_file() and run.files.embeddings.is_file()



HINTS = [
    ("optimizer", "learning_rate_ti", "did you mean 'embedding_lr'? (cloneofsimo's --learning_rate_ti"),
    ("training", "max_train_steps_ti", "did you mean 'ti_steps'? (cloneofsimo's --max_train_steps_ti"),
    ("training", "placeholder_tokens", "did you mean 'token_names'? (cloneofsimo's --placeholder_tokens"),
    ("network", "lora_rank", "did you mean 'rank'? (cloneofsimo's --lora_rank; cloneofsimo has no alpha"),
    ("optimizer", "learning_rate_unet", "did you mean 'unet_lr'? (cloneofsimo's --learning_rate_unet"),
    ("dataset", "use_face_segmentation_condition",
     "cloneofsimo's --use_face_segmentation_condition has no loraforge equivalent: no masked loss"),
    ("dataset", "cached_latents", "did you mean 'cache_latents'? (cloneofsimo's --cached_latents"),
]


@pytest.mark.parametrize("section, key, hint", HINTS, ids=[f"{h[0]}.{h[1]}" for h in HINTS])
def test_config_hint_knows_cloneofsimo_flags(section, key, hint):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{section}.{key}=1"])
    assert f"unknown key '{key}' in [{section}]; {hint}" in str(e.value)
