"""The data options inside real (tiny) training runs: SDXL time ids from buckets reach the UNet, cached latents and
text-encoder outputs give the losses of live encoding, disk caches survive into a new run, prior-preservation loss
weights shape the loss, and resume stays bit-exact with buckets and caption randomness across an epoch boundary."""

import pytest
import torch
from PIL import Image

from loraforge.training.trainer import Trainer


def images(folder, sizes, caption="sks robot, red, small, shiny"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (50 + 40 * i, 120, 90)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(caption)
    return str(folder)


def data_options(folder, **extra):
    return {"dataset.instance_dir": folder, "dataset.min_image_size": 16, **extra}


def test_sdxl_time_ids_from_buckets_reach_the_unet(make_config, tmp_path):
    folder = images(tmp_path / "img", [(130, 40), (40, 130), (64, 64)])  # cover 96×32 at 104×32: 8 px cropped
    cfg = make_config("sdxl", **data_options(folder, **{"dataset.enable_bucket": True,
                                                        "dataset.bucket_reso_steps": 32}))
    t = Trainer(cfg)
    t.prepare()
    seen = []
    unet = t.step.unet

    def spy(sample, timesteps, hidden, added_cond_kwargs=None, **kw):
        seen.append((tuple(sample.shape), added_cond_kwargs["time_ids"].tolist()))
        return unet(sample, timesteps, hidden, added_cond_kwargs=added_cond_kwargs, **kw)

    t.step.unet = spy
    try:
        for batch in t.train_dataloader:
            t.compute_loss(batch)
            h, w = batch["target_size"]
            (oh, ow), (top, left) = batch["original_sizes"][0], batch["crops_top_left"][0]
            assert seen[-1] == ((1, 4, h // 8, w // 8), [[oh, ow, top, left, h, w]])
    finally:
        t.close()
    got = sorted(ids[0] for _, ids in seen)
    assert got == [[40.0, 130.0, 0.0, 4.0, 32.0, 96.0], [64.0, 64.0, 0.0, 0.0, 64.0, 64.0],
                   [130.0, 40.0, 4.0, 0.0, 96.0, 32.0]]


def test_cached_runs_give_the_losses_of_live_runs_and_disk_caches_survive(make_config, tmp_path):
    folder = images(tmp_path / "img", [(64, 64), (80, 64), (64, 72)])
    (tmp_path / "img" / "1.txt").write_text("a second caption")
    common = data_options(folder, **{"dataset.random_flip": True, "training.max_train_steps": 3,
                                     "training.batch_size": 2})
    live = Trainer(make_config("sd15", **common, **{"output.output_name": "live"})).run()
    cached_cfg = make_config("sd15", **common, **{"output.output_name": "cached", "dataset.cache_latents_to_disk": True,
                                                  "dataset.cache_text_encoder_outputs": True})
    t = Trainer(cached_cfg)
    cached = t.run()
    assert t.cache_stats == {"latents": {"hits": 0, "misses": 6}, "text": {"hits": 0, "misses": 2}}
    assert cached.losses == pytest.approx(live.losses, rel=1e-5, abs=1e-7)
    assert len(set(live.losses)) == 3
    again = Trainer(make_config("sd15", **common, **{"output.output_name": "again", "dataset.cache_latents_to_disk": True}))
    again.prepare()
    again.close()
    assert again.cache_stats == {"latents": {"hits": 6, "misses": 0}}


def test_prior_loss_weights_shape_the_trainers_loss(make_config, tmp_path):
    inst = images(tmp_path / "inst", [(64, 64), (64, 64)])
    cls = tmp_path / "cls"  # empty: the 2 class images are generated with the base model first
    cfg = make_config("sd15", **data_options(inst, **{
        "dataset.with_prior_preservation": True, "dataset.class_data_dir": str(cls), "dataset.class_prompt": "a robot",
        "dataset.prior_loss_weight": 0.3, "dataset.num_class_images": 2, "training.batch_size": 4}))
    t = Trainer(cfg)
    t.prepare()
    try:
        assert sorted(p.name for p in cls.iterdir()) == ["class_00000.png", "class_00001.png"]
        batch = next(iter(t.train_dataloader))
        assert sorted(batch["loss_weights"].tolist()) == pytest.approx([0.3, 0.3, 1.0, 1.0])
        latents = t.encode_latents(batch["pixel_values"], batch["latent_seeds"])
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
        steps = torch.tensor([100, 300, 500, 700])
        with torch.no_grad():
            weighted = t.compute_loss(batch, latents, noise, steps)
            ones = t.compute_loss(batch | {"loss_weights": torch.ones(4)}, latents, noise, steps)
            reg = batch["is_reg"].float()
            only_reg = t.compute_loss(batch | {"loss_weights": reg}, latents, noise, steps)
            only_inst = t.compute_loss(batch | {"loss_weights": 1 - reg}, latents, noise, steps)
        # mean(w_i · l_i): w = 1 for the instance images, 0.3 for the class images
        assert weighted.item() == pytest.approx(only_inst.item() + 0.3 * only_reg.item(), rel=1e-5)
        assert ones.item() == pytest.approx(only_inst.item() + only_reg.item(), rel=1e-5)
        assert abs(weighted.item() - ones.item()) > 1e-6
    finally:
        t.close()


def test_resume_is_bit_exact_with_buckets_and_caption_randomness(make_config, tmp_path):
    from safetensors.torch import load_file

    folder = images(tmp_path / "img", [(120, 40), (124, 42), (40, 120), (64, 64)])
    common = data_options(folder, **{
        "dataset.enable_bucket": True, "dataset.bucket_reso_steps": 32, "dataset.shuffle_caption": True,
        "dataset.caption_tag_dropout_rate": 0.3, "dataset.random_flip": True, "dataset.center_crop": False,
        "training.batch_size": 2, "training.max_train_steps": 6})  # 3 bucket batches per epoch
    # saving a checkpoint does not disturb the run (tests/training/test_train_e2e.py), so one run gives both
    straight = Trainer(make_config("sd15", **common, **{"output.output_name": "straight",
                                                         "training.save_every_n_steps": 3})).run()
    # the end of epoch 0: the resumed run starts epoch 1 on a loader that has never been iterated
    ckpt = straight.run_dir / "checkpoints" / "step-000003"
    resumed = Trainer(make_config("sd15", **common, **{"output.output_name": "resumed",
                                                        "training.resume": str(ckpt)})).run()
    a, b = load_file(str(straight.files.kohya)), load_file(str(resumed.files.kohya))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.losses == straight.losses[3:]


def test_chunked_prompts_reach_the_unet_with_152_states(make_config, tmp_path):
    folder = images(tmp_path / "img", [(64, 64)], caption=" ".join(["robot"] * 100))
    cfg = make_config("sd15", **data_options(folder, **{"dataset.max_token_length": 150}))
    t = Trainer(cfg)
    t.prepare()
    seen, unet = [], t.step.unet

    def spy(sample, timesteps, hidden, **kw):
        seen.append(tuple(hidden.shape[:2]))
        return unet(sample, timesteps, hidden, **kw)

    t.step.unet = spy
    try:
        t.compute_loss(next(iter(t.train_dataloader)))
    finally:
        t.close()
    assert seen == [(1, 152)]


def test_a_width_height_resolution_trains_and_is_recorded_at_that_size(make_config, tmp_path):
    from safetensors import safe_open

    folder = images(tmp_path / "img", [(128, 128), (200, 90)])
    cfg = make_config("sd15", **data_options(folder, **{"dataset.resolution": [64, 96], "training.max_train_steps": 2}))
    t = Trainer(cfg)
    t.prepare()
    pixels, latents, unet, encode = [], [], t.step.unet, t.step.encode_latents

    def spy_encode(pixel_values, seeds=None):
        pixels.append(tuple(pixel_values.shape))
        return encode(pixel_values, seeds)

    def spy_unet(sample, *args, **kw):
        latents.append(tuple(sample.shape))
        return unet(sample, *args, **kw)

    t.step.encode_latents, t.step.unet = spy_encode, spy_unet
    try:
        t.train()
        result = t.finish()
    finally:
        t.close()
    assert t.resolution == (64, 96) and t.dataset.groups[0].buckets.resolution == (64, 96)
    assert pixels == [(1, 3, 96, 64)] * 2 and latents == [(1, 4, 12, 8)] * 2  # 96 high, 64 wide
    with safe_open(str(result.files.kohya), "pt") as f:
        meta = f.metadata()
    assert meta["ss_resolution"] == "(64, 96)" and meta["modelspec.resolution"] == "64x96"
