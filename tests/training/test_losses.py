"""Loss weighting and noise options change what is optimised, exactly as documented."""

import torch

from loraforge.data.dataset import collate
from loraforge.training.losses import min_snr_weights, offset_noise, per_sample_mse, pyramid_noise, snr
from loraforge.training.trainer import Trainer


def _sched():
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def test_min_snr_formulas():
    sched = _sched()
    t = torch.tensor([10, 500, 990])
    abar = sched.alphas_cumprod[t]
    s = abar / (1 - abar)
    assert torch.allclose(snr(sched, t), s)
    eps = min_snr_weights(sched, t, 5.0, "epsilon")
    v = min_snr_weights(sched, t, 5.0, "v_prediction")
    assert torch.allclose(eps, torch.minimum(s, torch.tensor(5.0)) / s)
    assert torch.allclose(v, torch.minimum(s, torch.tensor(5.0)) / (s + 1))
    assert eps[0] < 0.1 and eps[2] == 1.0  # low-noise steps are down-weighted, high-noise ones kept


def test_noise_offset_shifts_channel_means_and_pyramid_noise_is_correlated():
    torch.manual_seed(0)
    base = torch.randn(64, 4, 32, 32)
    shifted = offset_noise(base, 0.5)
    diff = (shifted - base)
    assert torch.allclose(diff, diff[:, :, :1, :1].expand_as(diff), atol=1e-6)  # constant per image and channel
    assert 0.3 < diff[:, :, 0, 0].std() < 0.7
    pyr = pyramid_noise(base, 6, 0.8)
    assert abs(pyr.std().item() - 1.0) < 1e-4
    # neighbouring pixels become correlated (white noise has none)
    corr = lambda x: torch.corrcoef(torch.stack([x[..., :-1].flatten(), x[..., 1:].flatten()]))[0, 1]
    assert corr(base) < 0.05 and corr(pyr) > 0.2


def _prepared(make_config, **overrides):
    t = Trainer(make_config("sd15", **overrides))
    t.prepare()
    batch = collate([t.dataset[0], t.dataset[1]])
    torch.manual_seed(0)
    latents = t.encode_latents(batch["pixel_values"])
    noise = torch.randn_like(latents)
    return t, batch, latents, noise


def test_snr_gamma_weights_the_training_loss(make_config):
    t, batch, latents, noise = _prepared(make_config, **{"training.snr_gamma": 5.0})
    ts = torch.tensor([20, 800])
    with torch.no_grad():
        weighted = t.compute_loss(batch, latents, noise, ts)
        t.cfg.training.snr_gamma = None
        plain_per_sample = []
        for i in range(2):
            one = {k: (v[i:i + 1] if torch.is_tensor(v) else v[i:i + 1]) for k, v in batch.items()}
            plain_per_sample.append(t.compute_loss(one, latents[i:i + 1], noise[i:i + 1], ts[i:i + 1]))
    t.close()
    w = min_snr_weights(t.noise_scheduler, ts, 5.0, "epsilon")
    expected = (torch.stack(plain_per_sample) * w).mean()
    torch.testing.assert_close(weighted, expected, rtol=1e-5, atol=1e-7)


def test_loss_weights_in_the_batch_are_applied(make_config):
    t, batch, latents, noise = _prepared(make_config)
    ts = torch.tensor([300, 300])
    with torch.no_grad():
        full = t.compute_loss(batch, latents, noise, ts)
        batch["loss_weights"] = torch.tensor([1.0, 0.0])
        first_only = t.compute_loss(batch, latents, noise, ts)
        one = {k: (v[:1] if torch.is_tensor(v) else v[:1]) for k, v in batch.items() if k != "loss_weights"}
        first = t.compute_loss(one, latents[:1], noise[:1], ts[:1])
    t.close()
    torch.testing.assert_close(first_only, first / 2)
    assert not torch.allclose(full, first_only)


def test_noise_options_reach_the_step(make_config):
    t, batch, latents, _ = _prepared(make_config, **{"training.noise_offset": 0.3})
    a, ts_a = t.make_noise(latents, batch["noise_seeds"])
    t.cfg.training.noise_offset = None
    b, ts_b = t.make_noise(latents, batch["noise_seeds"])
    t.close()
    assert not torch.allclose(a, b) and torch.equal(ts_a, ts_b)


def test_noise_and_timesteps_belong_to_the_sample_not_the_batch(make_config):
    # what makes N processes at batch B train as one process at batch N·B (tests/training/test_distributed.py)
    t, batch, latents, _ = _prepared(make_config, **{"training.multires_noise_iterations": 3})
    seeds = batch["noise_seeds"]
    torch.manual_seed(0)
    pair, ts_pair = t.make_noise(latents, seeds)
    torch.manual_seed(1)  # the global RNG plays no part
    second, ts_second = t.make_noise(latents[1:], seeds[1:])
    t.close()
    assert torch.equal(pair[1:], second) and torch.equal(ts_pair[1:], ts_second)
    assert not torch.equal(pair[0], pair[1]) and len(set(seeds)) == 2
    assert t.dataset[0].noise_seed != t.dataset[(1, 0)].noise_seed  # another epoch, other noise


def test_v_prediction_target(make_config):
    from loraforge.training.losses import diffusion_target

    sched = _sched()
    x, n, ts = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([100, 900])
    torch.testing.assert_close(diffusion_target(sched, x, n, ts, "v_prediction"), sched.get_velocity(x, n, ts))
    assert per_sample_mse(x, x).abs().max() == 0
