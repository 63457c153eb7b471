"""Run-level options: periodic saves and their pruning, sampling during training, VAE precision, clip skip,
steps per image."""

import torch
from PIL import Image

from loraforge.training.state import complete_checkpoints, read_state
from loraforge.training.trainer import Trainer


def test_save_every_n_epochs_and_keep_last_n_steps(make_config):
    # 8 demo images, batch 4: 2 steps an epoch; 8 steps = 4 epochs
    cfg = make_config("sd15", **{"training.max_train_steps": 8, "training.batch_size": 4,
                                  "training.save_every_n_epochs": 1, "training.save_last_n_steps": 2})
    result = Trainer(cfg).run()
    kept = complete_checkpoints(result.run_dir)
    # saves at steps 2, 4, 6 and the final step 8; only the last 2 steps' remain
    assert [p.name for p in kept] == ["step-000008"]
    st = read_state(kept[0])
    assert (st.global_step, st.epoch, st.batch_in_epoch) == (8, 4, 0)
    assert (kept[0] / "run-sd15-step00000008.safetensors").is_file()


def test_save_last_n_epochs(make_config):
    cfg = make_config("sd15", **{"training.max_train_steps": 7, "training.batch_size": 4,
                                  "training.save_every_n_steps": 1, "training.save_last_n_epochs": 1})
    result = Trainer(cfg).run()
    names = [p.name for p in complete_checkpoints(result.run_dir)]
    assert names == ["step-000006", "step-000007"]  # epoch 3 (steps 6-7, 7 the final one) kept, older pruned


def test_sampling_during_training_by_steps_epochs_and_prompt_file(make_config, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# kohya syntax\na robot in space --n blurry --d 7 --s 3 --ss ddim --w 64 --h 64\n")
    cfg = make_config("sd15", **{"training.max_train_steps": 4, "training.batch_size": 4,
                                  "sampling.sample_every_n_steps": 3, "sampling.sample_every_n_epochs": 1,
                                  "sampling.sample_prompts": str(prompts), "sampling.validation_prompt": "a robot"})
    result = Trainer(cfg).run()
    names = sorted(p.name for p in (result.run_dir / "samples").glob("*.png"))
    assert names == ["000003_0.png", "000003_1.png", "000003_grid.png",
                     "e001_0.png", "e001_1.png", "e001_grid.png", "e002_0.png", "e002_1.png", "e002_grid.png"]
    params = Image.open(result.run_dir / "samples" / "000003_1.png").text["parameters"]
    assert params.splitlines()[0] == "a robot in space <lora:run-sd15:1>"
    assert "Negative prompt: blurry" in params and "Steps: 3, Sampler: DDIM" in params and "Seed: 7" in params


def test_sampling_does_not_disturb_training(make_config):
    plain = Trainer(make_config("sd15", **{"output.output_name": "a"})).run()
    sampled = Trainer(make_config("sd15", **{"output.output_name": "b", "sampling.sample_every_n_steps": 1})).run()
    assert plain.losses == sampled.losses


def test_no_half_vae(make_config):
    t = Trainer(make_config("sd15", **{"training.mixed_precision": "bf16"}))
    t.prepare()
    t.close()
    assert t.vae_dtype == torch.bfloat16 and t.model.vae.dtype == torch.bfloat16
    t = Trainer(make_config("sd15", **{"training.mixed_precision": "bf16", "training.no_half_vae": True}))
    t.prepare()
    t.close()
    assert t.vae_dtype == torch.float32 and t.model.vae.dtype == torch.float32


def test_clip_skip_changes_the_conditioning(make_config):
    t = Trainer(make_config("sdxl"))
    t.prepare()
    t.close()
    base = t.encode_batch_text(["a photo of sks robot"]).prompt_embeds
    t.cfg.training.clip_skip = 1
    skipped = t.encode_batch_text(["a photo of sks robot"]).prompt_embeds
    assert base.shape == skipped.shape and not torch.allclose(base, skipped)


def test_steps_per_image(make_config):
    cfg = make_config("sd15", **{"training.max_train_steps": None, "training.max_train_steps_per_image": 2,
                                  "dataset.repeats": 3})
    t = Trainer(cfg)
    t.prepare()
    t.close()
    assert t.max_steps == 16  # 8 images × 2 (repeats do not count: they are the same images)


def test_max_grad_norm_bounds_the_update(make_config):
    cfg = make_config("sd15", **{"optimizer.type": "sgd", "optimizer.learning_rate": 1.0, "optimizer.adam_beta1": 0.0,
                                  "optimizer.adam_weight_decay": 0.0, "optimizer.max_grad_norm": 1e-3, "training.max_train_steps": 1,
                                  "network.init_lora_weights": "gaussian"})
    t = Trainer(cfg)
    t.prepare()
    before = [p.detach().clone() for p in t.trainable_parameters()]
    t.train()
    t.close()
    step = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(t.trainable_parameters(), before)))
    assert 0 < step.item() <= 1e-3 * 1.0001  # SGD with lr 1: the update is the clipped gradient


def test_gradient_checkpointing_and_save_precision(make_config):
    from safetensors import safe_open

    cfg = make_config("sdxl", **{"training.gradient_checkpointing": True, "output.save_precision": "fp16",
                                  "network.train_text_encoder": True, "training.max_train_steps": 2})
    t = Trainer(cfg)
    result = t.run()
    assert t.model.unet.is_gradient_checkpointing
    assert all(te.is_gradient_checkpointing for te in t.model.text_encoders)
    with safe_open(str(result.files.kohya), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}


def test_the_log_says_what_an_unset_alpha_means(make_config, caplog):
    """Our alpha defaults to the rank (kohya's to 1): a run that leaves it unset says so in its log."""
    caplog.set_level("INFO", logger="loraforge.train")
    for alpha, noted in ((None, True), (1.0, False)):
        caplog.clear()
        extra = {} if alpha is None else {"network.alpha": alpha}
        t = Trainer(make_config("sd15", **{"training.max_train_steps": 1, **extra}))
        try:
            t.prepare()
        finally:
            t.close()
        line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("network: lora rank"))
        assert ("alpha unset: alpha = rank" in line and "kohya's default is alpha 1" in line) == noted, line
