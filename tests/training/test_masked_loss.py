"""Masked loss: masks from the alpha channel or a mask folder, aligned with the image through resize, crop and flip,
scaled to the latents and weighting the loss; the background weight, area normalisation, unmasked prior images."""

import numpy as np
import pytest
import torch
from PIL import Image

from loraforge.config import ConfigError, load_config
from loraforge.data.dataset import collate
from loraforge.data.images import resize_and_crop
from loraforge.data.masks import MaskSource, transform_mask
from loraforge.errors import DataError
from loraforge.training.losses import element_loss, mask_weights, per_sample_loss
from loraforge.training.trainer import Trainer

from .test_data_training import data_options


def _half_opaque(path, size=(96, 64)):
    """An RGBA image whose left third is opaque red and the rest transparent."""
    arr = np.zeros((size[1], size[0], 4), dtype=np.uint8)
    arr[:, : size[0] // 3] = (200, 30, 30, 255)
    Image.fromarray(arr, "RGBA").save(path)


def test_mask_follows_the_images_resize_crop_and_flip():
    img = Image.new("RGB", (120, 80), (0, 0, 0))
    img.paste((255, 255, 255), (10, 5, 50, 60))
    mask = img.convert("L")
    rng = np.random.default_rng(3)
    cropped, crop = resize_and_crop(img, (64, 64), False, rng)  # a random crop
    for flip in (False, True):
        pixels = cropped.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else cropped
        m = transform_mask(mask, (64, 64), crop, flip)
        assert m.shape == (1, 64, 64)
        white = torch.from_numpy(np.asarray(pixels.convert("L"), dtype=np.float32) / 255.0)
        assert (m[0] - white).abs().max() < 0.2  # the same geometry (resampling differs at the edges only)


def test_mask_weights_and_weighted_loss():
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, :, :, :4] = 1.0  # left half
    w = mask_weights(masks, (4, 4), 0.0)
    assert w.shape == (2, 1, 4, 4) and torch.equal(w[0, 0, :, :2], torch.ones(4, 2)) and w[1].max() == 0
    w_bg = mask_weights(masks, (4, 4), 0.25)
    torch.testing.assert_close(w_bg, 0.25 + 0.75 * w)
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    elem = element_loss(pred, target)
    torch.testing.assert_close(per_sample_loss(pred, target, weight_map=w), (elem * w).mean(dim=(1, 2, 3)))
    normalised = per_sample_loss(pred, target, weight_map=w_bg, normalize=True)
    torch.testing.assert_close(normalised, (elem * w_bg).mean(dim=(1, 2, 3)) / w_bg.mean(dim=(1, 2, 3)))


def test_alpha_and_folder_masks(tmp_path):
    _half_opaque(tmp_path / "a.png")
    Image.new("RGB", (96, 64)).save(tmp_path / "plain.png")
    alpha = MaskSource(None)
    m = alpha.load(tmp_path / "a.png", None, (96, 64))
    assert np.asarray(m)[:, :32].min() == 255 and np.asarray(m)[:, 32:].max() == 0
    assert np.asarray(alpha.load(tmp_path / "plain.png", None, (96, 64))).min() == 255  # no alpha: all trained
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.new("RGB", (48, 32), (255, 0, 0)).save(masks / "a.png")  # half size, red = trained
    folder = MaskSource(masks)
    assert np.asarray(folder.load(tmp_path / "a.png", None, (96, 64))).min() == 255  # scaled to the image
    with pytest.raises(DataError, match="has no mask for"):
        folder.load(tmp_path / "plain.png", None, (96, 64))
    # regularisation images stay unmasked unless asked
    assert torch.equal(alpha.render(tmp_path / "a.png", None, True, (96, 64), (64, 64), (0, 16), False),
                       torch.ones(1, 64, 64))
    assert MaskSource(None, reg_images=True).render(tmp_path / "a.png", None, True, (96, 64), (64, 64), (0, 16),
                                                    False).min() == 0


@pytest.mark.parametrize("overrides, message", [
    (["training.masked_loss=true"], "needs masks"),
    (["dataset.alpha_mask=true"], "training.masked_loss is off"),
    (["training.masked_loss=true", "dataset.alpha_mask=true", "dataset.mask_dir='m'"], "keep one"),
    (["training.unmasked_weight=0.1"], "masked_loss is off"),
])
def test_bad_combinations_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_missing_mask_file_is_refused_before_training(make_config, tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    _half_opaque(folder / "0.png")
    (tmp_path / "masks").mkdir()
    t = Trainer(make_config("sd15", **data_options(str(folder), **{
        "dataset.instance_prompt": "sks", "training.masked_loss": True, "dataset.mask_dir": str(tmp_path / "masks")})))
    try:
        with pytest.raises(DataError, match="has no mask for"):
            t.prepare()
    finally:
        t.close()


def test_masks_reach_the_batch_aligned_and_weight_the_loss(make_config, tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    for i in range(2):
        _half_opaque(folder / f"{i}.png")
    t = Trainer(make_config("sd15", **data_options(str(folder), **{
        "dataset.instance_prompt": "sks", "training.masked_loss": True, "dataset.alpha_mask": True,
        "dataset.random_flip": True, "dataset.center_crop": False})))
    t.prepare()
    try:
        flips = set()
        for epoch in range(4):
            ex = t.dataset[(epoch, 0)]
            red = ex.pixel_values[1] < 0  # the opaque red part (green channel low); the rest is white
            assert torch.equal(red, ex.mask[0] > 0.5), epoch  # the mask stays on the pixels, flipped or not
            flips.add(bool(red[:, 0].all()))
        assert flips == {True, False}  # both orientations were seen
        batch = collate([t.dataset[0], t.dataset[1]])
        assert batch["masks"].shape == (2, 1, 64, 64)
        latents = t.encode_latents(batch["pixel_values"], batch["latent_seeds"])
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
        ts = torch.tensor([300, 600])
        with torch.no_grad():
            masked = t.compute_loss(batch, latents, noise, ts)
            batch_zero = {**batch, "masks": torch.zeros_like(batch["masks"])}
            zero = t.compute_loss(batch_zero, latents, noise, ts)
            t.step.training = t.cfg.training.model_copy(update={"unmasked_weight": 1.0})
            everywhere = t.compute_loss(batch, latents, noise, ts)
            t.step.training = t.cfg.training.model_copy(update={"normalize_masked_area_loss": True})
            normalised = t.compute_loss(batch, latents, noise, ts)
    finally:
        t.close()
    assert zero == 0 and 0 < masked < everywhere  # a third of the image trains
    assert normalised > masked
