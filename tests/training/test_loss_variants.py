"""Loss variants, timestep weights, timestep drawing and noise tricks: the formulas, the config checks, and each
option reaching the training step (a step that ignored it would compute another loss or draw other timesteps)."""

import pytest
import torch

from loraforge.config import ConfigError, load_config
from loraforge.data.dataset import collate
from loraforge.training.losses import (
    debiased_weights, huber_threshold, min_snr_weights, p2_weights, per_sample_loss, per_sample_mse, snr,
    timestep_weights, v_like_noise_weights,
)
from loraforge.training.timesteps import draw_timestep, input_perturbation, zero_terminal_snr_scheduler
from loraforge.training.trainer import Trainer


def _sched():
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def _training(*overrides):
    return load_config(None, list(overrides)).training


# ------------------------------------------------------------------------------------------------- formulas
def test_element_losses():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    e = pred - target
    torch.testing.assert_close(per_sample_loss(pred, target, "l2"), per_sample_mse(pred, target))
    torch.testing.assert_close(per_sample_loss(pred, target, "l1"), e.abs().mean(dim=(1, 2, 3)))
    c = torch.tensor([0.1, 0.5, 2.0])
    cv = c.view(-1, 1, 1, 1)
    huber = per_sample_loss(pred, target, "huber", c)
    torch.testing.assert_close(huber, (2 * cv * (torch.sqrt(e**2 + cv**2) - cv)).mean(dim=(1, 2, 3)))
    torch.testing.assert_close(per_sample_loss(pred, target, "smooth_l1", c), huber / c)
    # the limits: a large δ is L2, a small one 2δ·L1 (Huber) or 2·L1 (smooth L1)
    big, small = torch.full((3,), 30.0), torch.full((3,), 1e-5)
    torch.testing.assert_close(per_sample_loss(pred, target, "huber", big), per_sample_mse(pred, target), rtol=5e-3,
                               atol=1e-5)
    torch.testing.assert_close(per_sample_loss(pred, target, "smooth_l1", small), 2 * e.abs().mean(dim=(1, 2, 3)),
                               rtol=1e-3, atol=1e-4)


def test_huber_schedules_as_kohya():
    sched = _sched()
    t = torch.tensor([0, 500, 1000 - 1])
    torch.testing.assert_close(huber_threshold(sched, t, 0.1, "constant", 2.0), torch.full((3,), 0.2))
    exp = huber_threshold(sched, t, 0.1, "exponential", 1.0)
    torch.testing.assert_close(exp, torch.exp(t.float() * torch.log(torch.tensor(0.1)) / 1000))
    assert exp[0] == 1.0 and abs(exp[2].item() - 0.1) < 0.001
    abar = sched.alphas_cumprod[t]
    sigma = ((1 - abar) / abar) ** 0.5
    s = huber_threshold(sched, t, 0.1, "snr", 5.0)  # kohya applies no scale to the snr schedule
    torch.testing.assert_close(s, 0.9 / (1 + sigma) ** 2 + 0.1)
    assert s[0] > 0.8 and s[2] < 0.11 and bool((s[:-1] > s[1:]).all())


def test_timestep_weights_formulas():
    sched = _sched()
    t = torch.tensor([0, 10, 500, 990])
    s = snr(sched, t)
    capped = s.clamp(max=1000)
    assert s[0] > 1000  # the cap matters at t = 0
    torch.testing.assert_close(debiased_weights(sched, t, "epsilon"), 1 / capped.sqrt())
    torch.testing.assert_close(debiased_weights(sched, t, "v_prediction"), 1 / (capped + 1))
    torch.testing.assert_close(v_like_noise_weights(sched, t), capped / (capped + 1))
    torch.testing.assert_close(p2_weights(sched, t, 0.5), 1 / (1 + s) ** 0.5)
    hard, soft = min_snr_weights(sched, t, 5.0, "epsilon"), min_snr_weights(sched, t, 5.0, "epsilon", soft=True)
    torch.testing.assert_close(soft, (s * 5 / (s + 5)) / s)
    assert bool((soft < hard).all()) and abs(soft[0] - hard[0]) < 0.01  # below the hard minimum, close far from γ


def test_timestep_weights_multiply_the_options_that_are_on():
    sched = _sched()
    t = torch.tensor([10, 500, 990])
    assert timestep_weights(sched, t, _training(), "epsilon") is None
    both = timestep_weights(sched, t, _training("training.snr_gamma=5.0", "training.debiased_estimation_loss=true",
                                                "training.p2_gamma=1.0"), "epsilon")
    expected = min_snr_weights(sched, t, 5.0, "epsilon") * debiased_weights(sched, t, "epsilon") * p2_weights(sched, t, 1.0)
    torch.testing.assert_close(both, expected)
    v = timestep_weights(sched, t, _training("training.scale_v_pred_loss_like_noise_pred=true"), "v_prediction")
    torch.testing.assert_close(v, v_like_noise_weights(sched, t))


def test_draw_timestep_range_and_distributions():
    def draws(*overrides, n=2000):
        training = _training(*overrides)
        g = torch.Generator().manual_seed(0)
        return torch.cat([draw_timestep(g, training, 1000) for _ in range(n)])

    # uniform over the whole schedule is the draw training made before these options existed
    g = torch.Generator().manual_seed(7)
    assert torch.equal(draw_timestep(g, _training(), 1000), torch.randint(0, 1000, (1,),
                                                                          generator=torch.Generator().manual_seed(7)))
    ranged = draws("training.min_timestep=200", "training.max_timestep=400")
    assert ranged.min() >= 200 and ranged.max() <= 399 and ranged.max() >= 390
    uniform = draws()
    for kind in ("logit_normal", "sigmoid", "beta"):
        drawn = draws(f"training.timestep_sampling='{kind}'")
        assert drawn.dtype == torch.int64 and drawn.min() >= 0 and drawn.max() <= 999
        # all three put more draws in the middle than uniform does
        middle = ((drawn > 250) & (drawn < 750)).float().mean()
        assert middle > ((uniform > 250) & (uniform < 750)).float().mean() + 0.1, kind
    shifted = draws("training.timestep_sampling='logit_normal'", "training.logit_mean=1.0")
    assert shifted.float().mean() > 650  # sigmoid(1) ≈ 0.73
    narrow = draws("training.timestep_sampling='beta'", "training.timestep_beta_alpha=20.0",
                   "training.timestep_beta_beta=20.0", "training.min_timestep=100", "training.max_timestep=300")
    assert narrow.min() >= 100 and narrow.max() < 300 and abs(narrow.float().mean() - 200) < 5


def test_input_perturbation_per_sample():
    a = input_perturbation((4, 8, 8), [1, 2], 0.1, False)
    b = input_perturbation((4, 8, 8), [2], 0.1, False)
    assert torch.equal(a[1:], b) and not torch.equal(a[0], a[1])
    assert 0.08 < a.std() < 0.12
    random = input_perturbation((4, 8, 8), list(range(64)), 0.1, True)
    per_sample = random.flatten(1).std(dim=1)
    assert per_sample.max() < 0.12 and per_sample.min() < 0.03  # each sample its own strength in [0, γ)


def test_zero_terminal_snr_rescales_the_schedule():
    sched = _sched()
    zt = zero_terminal_snr_scheduler(sched)
    assert zt.alphas_cumprod[-1] < 1e-9 < sched.alphas_cumprod[-1]
    torch.testing.assert_close(zt.alphas_cumprod[0], sched.alphas_cumprod[0])
    t = torch.tensor([999])
    assert torch.isfinite(min_snr_weights(zt, t, 5.0, "v_prediction")).all()
    assert torch.isfinite(debiased_weights(zt, t, "v_prediction")).all()


# ------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("overrides, message", [
    (["training.loss_type='huber'", "training.huber_c=0"], "huber_c"),
    (["training.huber_c=0.2"], "training.huber_c set, but training.loss_type = 'l2'"),
    (["training.min_timestep=500", "training.max_timestep=500"], "min_timestep = 500 is not below"),
    (["training.min_timestep=1000"], "below 1000"),
    (["training.soft_min_snr=true"], "soft_min_snr = true needs training.snr_gamma"),
    (["training.ip_noise_gamma_random_strength=true"], "needs training.ip_noise_gamma"),
    (["training.logit_std=2.0"], "timestep_sampling = 'uniform' does not use them"),
    (["training.zero_terminal_snr=true", "model.prediction_type='epsilon'"], "needs a v-prediction model"),
    (["training.scale_v_pred_loss_like_noise_pred=true", "model.prediction_type='epsilon'"], "v-prediction"),
])
def test_bad_combinations_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_zero_terminal_snr_on_an_epsilon_model_is_refused_at_load(make_config):
    t = Trainer(make_config("sd15", **{"training.zero_terminal_snr": True}))  # prediction_type auto: epsilon
    try:
        with pytest.raises(ConfigError, match="zero_terminal_snr needs a v-prediction model"):
            t.prepare()
    finally:
        t.close()


# ------------------------------------------------------------------------------------------------- wiring
def _prepared(make_config, family="sd15", **overrides):
    t = Trainer(make_config(family, **overrides))
    t.prepare()
    batch = collate([t.dataset[0], t.dataset[1]])
    latents = t.encode_latents(batch["pixel_values"], batch["latent_seeds"])
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    return t, batch, latents, noise


def _loss(t, batch, latents, noise, ts, **training):
    t.step.training = t.cfg.training.model_copy(update=training)
    with torch.no_grad():
        return t.compute_loss(batch, latents, noise, ts)


def test_loss_type_and_huber_schedule_reach_the_step(make_config):
    t, batch, latents, noise = _prepared(make_config)
    ts = torch.tensor([100, 700])
    try:
        l2 = _loss(t, batch, latents, noise, ts)
        l1 = _loss(t, batch, latents, noise, ts, loss_type="l1")
        # pseudo-Huber tends to L2 for a large δ and smooth L1 to 2·L1 for a small one: δ reaches the loss
        huber_big = _loss(t, batch, latents, noise, ts, loss_type="huber", huber_schedule="constant", huber_c=30.0)
        huber_half = _loss(t, batch, latents, noise, ts, loss_type="huber", huber_schedule="constant", huber_c=0.5)
        smooth_half = _loss(t, batch, latents, noise, ts, loss_type="smooth_l1", huber_schedule="constant",
                            huber_c=0.5)
        smooth_small = _loss(t, batch, latents, noise, ts, loss_type="smooth_l1", huber_schedule="constant",
                             huber_c=1e-5)
        snr_sched = _loss(t, batch, latents, noise, ts, loss_type="huber")
        exp_sched = _loss(t, batch, latents, noise, ts, loss_type="huber", huber_schedule="exponential")
    finally:
        t.close()
    assert abs(l1 - l2) > 1e-3
    torch.testing.assert_close(huber_big, l2, rtol=5e-3, atol=1e-6)
    torch.testing.assert_close(huber_half, 0.5 * smooth_half)
    torch.testing.assert_close(smooth_small, 2 * l1, rtol=1e-3, atol=1e-5)
    assert abs(snr_sched - exp_sched) > 1e-4


@pytest.mark.parametrize("options, weight", [
    ({"debiased_estimation_loss": True}, lambda s, ts: debiased_weights(s, ts, "epsilon")),
    ({"p2_gamma": 1.0}, lambda s, ts: p2_weights(s, ts, 1.0)),
    ({"snr_gamma": 5.0, "soft_min_snr": True}, lambda s, ts: min_snr_weights(s, ts, 5.0, "epsilon", soft=True)),
], ids=["debiased", "p2", "soft-min-snr"])
def test_timestep_weightings_reach_the_step(make_config, options, weight):
    t, batch, latents, noise = _prepared(make_config)
    ts = torch.tensor([20, 800])
    try:
        plain = [_loss(t, {k: v[i:i + 1] for k, v in batch.items()}, latents[i:i + 1], noise[i:i + 1], ts[i:i + 1])
                 for i in range(2)]
        weighted = _loss(t, batch, latents, noise, ts, **options)
    finally:
        t.close()
    torch.testing.assert_close(weighted, (torch.stack(plain) * weight(t.noise_scheduler, ts)).mean(), rtol=1e-5,
                               atol=1e-7)


def test_v_prediction_options_reach_the_step(make_config):
    # the tiny SD 2 model predicts v: zero-terminal SNR changes the schedule the step noises with
    t, batch, latents, noise = _prepared(make_config, "sd2", **{"training.zero_terminal_snr": True})
    ts = torch.tensor([999, 999])
    try:
        assert t.noise_scheduler.alphas_cumprod[-1] < 1e-9
        rescaled = _loss(t, batch, latents, noise, ts)
        scaled = _loss(t, batch, latents, noise, torch.tensor([10, 999]), scale_v_pred_loss_like_noise_pred=True)
        unscaled = _loss(t, batch, latents, noise, torch.tensor([10, 999]))
        t.step.noise_scheduler = t.model.noise_scheduler()
        original = _loss(t, batch, latents, noise, ts)
    finally:
        t.close()
    assert abs(rescaled - original) > 1e-4
    assert scaled < unscaled  # SNR/(SNR + 1) < 1, and ≈ 0 at the last step


def test_timestep_range_and_sampling_reach_the_drawn_timesteps(make_config):
    t, batch, latents, _ = _prepared(make_config, **{"training.min_timestep": 300, "training.max_timestep": 302})
    try:
        seeds = list(range(40))
        _, ranged = t.make_noise(latents[:1].expand(40, -1, -1, -1), seeds)
        t.step.training = t.cfg.training.model_copy(update={"min_timestep": None, "max_timestep": None,
                                                            "timestep_sampling": "logit_normal", "logit_mean": 3.0})
        _, late = t.make_noise(latents[:1].expand(40, -1, -1, -1), seeds)
    finally:
        t.close()
    assert set(ranged.tolist()) <= {300, 301}
    assert late.float().mean() > 850  # sigmoid(3) ≈ 0.95


def test_ip_noise_gamma_perturbs_the_input_not_the_target(make_config):
    t, batch, latents, noise = _prepared(make_config)
    ts = torch.tensor([400, 400])
    seen = []
    add_noise = t.noise_scheduler.add_noise
    t.noise_scheduler.add_noise = lambda x, n, s: seen.append(n.clone()) or add_noise(x, n, s)
    try:
        plain = _loss(t, batch, latents, noise, ts)
        perturbed = _loss(t, batch, latents, noise, ts, ip_noise_gamma=0.5)
    finally:
        t.close()
    expected = input_perturbation(tuple(latents.shape[1:]), batch["noise_seeds"], 0.5, False)
    torch.testing.assert_close(seen[0], noise)
    torch.testing.assert_close(seen[1], noise + expected)
    assert abs(plain - perturbed) > 1e-4
