"""The VAE and text encoders are released after caching when nothing needs them again (issue 13), and kept when
samples are drawn or the text encoders train."""

import torch

from loraforge.training.trainer import Trainer

from .test_data_training import data_options, images


def _devices(model):
    return {"vae": {p.device.type for p in model.vae.parameters()},
            "te": {p.device.type for te in model.text_encoders for p in te.parameters()},
            "unet": {p.device.type for p in model.unet.parameters()}}


def test_cached_runs_release_the_vae_and_text_encoders_and_still_train(make_config, tmp_path):
    folder = images(tmp_path / "img", [(64, 64), (64, 64)])
    cfg = make_config("sd15", **data_options(folder, **{
        "dataset.cache_latents": True, "dataset.cache_text_encoder_outputs": True, "training.max_train_steps": 2}))
    t = Trainer(cfg)
    t.prepare()
    try:
        assert _devices(t.model) == {"vae": {"meta"}, "te": {"meta"}, "unet": {"cpu"}}
        loss = t.compute_loss(next(iter(t.train_dataloader)))
        assert torch.isfinite(loss)
    finally:
        t.close()


def test_latents_alone_release_the_vae_only(make_config, tmp_path):
    folder = images(tmp_path / "img", [(64, 64)])
    t = Trainer(make_config("sd15", **data_options(folder, **{"dataset.cache_latents": True})))
    t.prepare()
    t.close()
    assert _devices(t.model) == {"vae": {"meta"}, "te": {"cpu"}, "unet": {"cpu"}}


def test_sampling_keeps_them_and_samples(make_config, tmp_path):
    folder = images(tmp_path / "img", [(64, 64)])
    cfg = make_config("sd15", **data_options(folder, **{
        "dataset.cache_latents": True, "dataset.cache_text_encoder_outputs": True, "training.max_train_steps": 1,
        "sampling.at_end": True, "sampling.width": 64, "sampling.height": 64}))
    t = Trainer(cfg)
    result = t.run()
    assert _devices(t.model) == {"vae": {"cpu"}, "te": {"cpu"}, "unet": {"cpu"}}
    assert len(result.samples) == 1 and result.samples[0].is_file()


def test_the_caches_fill_before_the_denoiser_is_set_up(make_config, tmp_path, monkeypatch):
    """The caches' encoders do their work and leave before the denoiser is moved, quantized and wrapped by the LoRA,
    so the two are never on the device together (FLUX: T5-XXL and the transformer; `loraforge plan` counts it so)."""
    from loraforge.data.build import TrainData

    folder = images(tmp_path / "img", [(64, 64)])
    seen = []
    fill = TrainData.fill_caches

    def spy(self, ctx):
        seen.append(getattr(t, "network", None))
        return fill(self, ctx)

    monkeypatch.setattr(TrainData, "fill_caches", spy)
    t = Trainer(make_config("sd15", **data_options(folder, **{"dataset.cache_text_encoder_outputs": True})))
    t.prepare()
    t.close()
    assert seen == [None]  # the caches filled once, before the network existed
    assert tuple(t.network.parts) == ("unet",)  # it came after
