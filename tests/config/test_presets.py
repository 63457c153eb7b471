import pytest

from loraforge.config import ConfigError, load_config
from loraforge.config.presets import PRESETS, presets_toml


def test_preset_fills_defaults_and_explicit_options_win(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('preset = "face"\n[network]\nrank = 8\n')
    cfg = load_config(f)
    assert cfg.network.rank == 8  # explicit wins
    assert cfg.network.alpha == 32 and cfg.optimizer.type == "prodigy" and cfg.optimizer.learning_rate == 1.0
    assert cfg.training.snr_gamma == 5.0 and cfg.training.train_text_encoder_ti
    assert cfg.training.max_train_steps_per_image == 120
    cfg2 = load_config(f, ["optimizer.type=adamw", "optimizer.learning_rate=1e-4"])
    assert cfg2.optimizer.type == "adamw" and cfg2.optimizer.learning_rate == 1e-4


def test_every_preset_is_a_valid_config(tmp_path):
    for name in PRESETS:
        f = tmp_path / f"{name}.toml"
        f.write_text(f'preset = "{name}"\n')
        cfg = load_config(f)
        assert cfg.preset == name and cfg.network.rank in (16, 32)
    assert 'preset = "style"' in presets_toml()


def test_unknown_preset_suggests(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('preset = "fase"\n')
    with pytest.raises(ConfigError, match="unknown preset 'fase'; did you mean 'face'"):
        load_config(f)


def test_a_preset_leaves_its_ddpm_options_out_for_flux():
    """The seed-guide presets carry min-SNR-γ (an SD recipe); on FLUX (flow matching) it would be refused, so a
    preset with model.family = "flux" leaves the DDPM-only options out and keeps the rest."""
    sd = load_config(None, ["preset='face'"])
    flux = load_config(None, ["preset='face'", "model.family='flux'"])
    assert sd.training.snr_gamma == 5.0
    assert flux.training.snr_gamma is None
    assert flux.training.train_text_encoder_ti  # pivotal tuning is kept (CLIP-L's tokens, as diffusers' FLUX script)
    assert flux.optimizer.type == sd.optimizer.type and flux.network.rank == sd.network.rank
