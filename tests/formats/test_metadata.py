"""The training metadata in the LoRA header: the resolution as sd-scripts writes it."""

import pytest

from loraforge.config import load_config
from loraforge.formats.metadata import training_metadata


@pytest.mark.parametrize("resolution, ss, modelspec", [
    ((64, 96), "(64, 96)", "64x96"),  # the run's (width, height)
    ([96, 64], "(96, 64)", "96x64"),  # as read back from a JSON run state
    (512, "(512, 512)", "512x512"),  # a square written as one number
    (None, "", ""),
])
def test_resolution_is_width_height(resolution, ss, modelspec):
    meta = training_metadata(load_config(None, []), {"resolution": resolution}, "sd15", "lora")
    assert meta["ss_resolution"] == ss and meta["modelspec.resolution"] == modelspec


def test_noise_options_and_clip_skip_are_recorded_as_sd_scripts_does():
    plain = training_metadata(load_config(None, []), {}, "sd15", "lora")
    assert not {"ss_min_snr_gamma", "ss_noise_offset", "ss_clip_skip"} & set(plain)
    cfg = load_config(None, ["training.snr_gamma=5.0", "training.noise_offset=0.05", "training.clip_skip=1"])
    meta = training_metadata(cfg, {}, "sd15", "lora")
    # clip_skip 1 (the penultimate layer) is kohya's --clip_skip 2
    assert (meta["ss_min_snr_gamma"], meta["ss_noise_offset"], meta["ss_clip_skip"]) == ("5.0", "0.05", "2")


def test_loss_and_noise_variants_are_recorded_with_kohyas_keys():
    plain = training_metadata(load_config(None, []), {}, "sd15", "lora")
    assert not {"ss_loss_type", "ss_huber_c", "ss_debiased_estimation", "ss_ip_noise_gamma"} & set(plain)
    cfg = load_config(None, ["training.loss_type='huber'", "training.huber_c=0.2", "training.huber_schedule='constant'",
                             "training.debiased_estimation_loss=true", "training.ip_noise_gamma=0.1"])
    meta = training_metadata(cfg, {}, "sd15", "lora")
    assert (meta["ss_loss_type"], meta["ss_huber_schedule"], meta["ss_huber_c"], meta["ss_huber_scale"]) == (
        "huber", "constant", "0.2", "1.0")
    assert meta["ss_debiased_estimation"] == "True" and meta["ss_ip_noise_gamma"] == "0.1"
