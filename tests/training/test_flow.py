"""The flow-matching math (training/flow.py, timesteps.draw_flow_timestep) against hand-computed values and against
what diffusers' FLUX pipeline and training utilities compute."""

import math
from types import SimpleNamespace

import pytest
import torch

from loraforge.training.flow import (
    flow_sigmas, flow_target, latent_image_ids, loss_weighting, noisy_latents, pack_latents, resolution_mu,
    shift_sigmas, time_shift, unpack_latents,
)
from loraforge.training.timesteps import draw_flow_timestep


def test_noisy_latents_and_target_by_hand():
    x = torch.tensor([[2.0, -1.0]]).view(1, 2, 1, 1).repeat(2, 1, 1, 1)
    n = torch.tensor([[0.5, 3.0]]).view(1, 2, 1, 1).repeat(2, 1, 1, 1)
    noisy = noisy_latents(x, n, torch.tensor([0.25, 1.0]))
    # (1 - 0.25)·2 + 0.25·0.5 = 1.625; 0.75·(-1) + 0.25·3 = 0; σ = 1: pure noise
    assert noisy[0].flatten().tolist() == [1.625, 0.0]
    assert noisy[1].flatten().tolist() == [0.5, 3.0]
    assert flow_target(x, n)[0].flatten().tolist() == [-1.5, 4.0]


def test_fixed_shift_by_hand():
    s = shift_sigmas(torch.tensor([0.0, 0.5, 1.0, 0.25]), 3.0)
    # 3·0.5/(1 + 2·0.5) = 0.75; 3·0.25/(1 + 0.5) = 0.5; the ends stay
    assert s.tolist() == [0.0, 0.75, 1.0, 0.5]
    assert torch.equal(flow_sigmas(torch.tensor([0.3]), None, None), torch.tensor([0.3]))


def test_resolution_shift_by_hand_and_as_diffusers():
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    assert resolution_mu(256) == pytest.approx(0.5)
    assert resolution_mu(4096) == pytest.approx(1.15)
    assert resolution_mu(2176) == pytest.approx(0.825)  # halfway
    for tokens in (16, 1024, 4096):
        assert resolution_mu(tokens) == pytest.approx(calculate_shift(tokens, 256, 4096, 0.5, 1.15))
    # e^μ/(e^μ + 1/σ − 1) with μ = ln 3, σ = 0.5: 3/(3 + 1) = 0.75 (= the fixed shift 3 at this point)
    assert time_shift(torch.tensor([0.5]), math.log(3.0)).item() == pytest.approx(0.75)
    assert time_shift(torch.tensor([0.2]), math.log(3.0)).item() == pytest.approx(3 / (3 + 4))


def test_resolution_shift_matches_the_schedulers():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    sigmas = torch.tensor([0.1, 0.4, 0.9])
    mu = resolution_mu(4096)
    assert torch.allclose(time_shift(sigmas, mu), sched.time_shift(mu, 1.0, sigmas))


def test_loss_weighting_as_diffusers_sd3():
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    sigmas = torch.tensor([0.1, 0.5, 0.8])
    assert loss_weighting("sigma_sqrt", sigmas).tolist() == pytest.approx([100.0, 4.0, 1.5625])
    # cosmap at σ = 0.5: 2/(π(1 − 1 + 0.5)) = 4/π
    assert loss_weighting("cosmap", sigmas)[1].item() == pytest.approx(4 / math.pi)
    assert loss_weighting("none", sigmas).tolist() == [1.0, 1.0, 1.0]
    for scheme in ("sigma_sqrt", "cosmap"):
        want = compute_loss_weighting_for_sd3(scheme, sigmas)
        assert torch.allclose(loss_weighting(scheme, sigmas), want)


def test_packing_is_fluxpipelines():
    from diffusers import FluxPipeline

    torch.manual_seed(0)
    latents = torch.randn(2, 16, 6, 4)
    packed = pack_latents(latents)
    assert packed.shape == (2, 6, 64)
    assert torch.equal(packed, FluxPipeline._pack_latents(latents, 2, 16, 6, 4))
    assert torch.equal(unpack_latents(packed, 6, 4), latents)
    # FluxPipeline unpacks from the pixel size and its VAE factor 8
    assert torch.equal(FluxPipeline._unpack_latents(packed, 48, 32, 8), latents)
    # the first token is the top-left 2×2 patch, channels (c, dy, dx)
    assert packed[0, 0, :4].tolist() == latents[0, 0, :2, :2].flatten().tolist()


def test_latent_image_ids_are_fluxpipelines():
    from diffusers import FluxPipeline

    ids = latent_image_ids(6, 4)
    assert ids.shape == (6, 3)
    assert ids.tolist()[:3] == [[0, 0, 0], [0, 0, 1], [0, 1, 0]]
    want = FluxPipeline._prepare_latent_image_ids(1, 3, 2, "cpu", torch.float32)
    assert torch.equal(ids, want.reshape(-1, 3))


def _training(**kw):
    base = dict(timestep_sampling="uniform", min_timestep=None, max_timestep=None, flow_shift=None,
                flow_resolution_shift=False, logit_mean=0.0, logit_std=1.0, sigmoid_scale=1.0)
    return SimpleNamespace(**{**base, **kw})


SCHED = {"base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15}


def _draw(seed: int, **kw) -> float:
    g = torch.Generator().manual_seed(seed)
    return draw_flow_timestep(g, _training(**kw), 1000, 4096, SCHED).item()


def test_flow_timestep_draws():
    u = torch.rand((1,), generator=torch.Generator().manual_seed(7)).item()
    assert _draw(7) == pytest.approx(1000 * u)  # uniform: σ = u, as timesteps σ·1000
    assert _draw(7, flow_shift=3.0) == pytest.approx(1000 * 3 * u / (1 + 2 * u))
    assert _draw(7, flow_resolution_shift=True) == pytest.approx(1000 * math.exp(1.15) / (math.exp(1.15) + 1 / u - 1))
    # the range: [min, max) of 1000 squeezes u into [0.2, 0.6)
    assert _draw(7, min_timestep=200, max_timestep=600) == pytest.approx(200 + 400 * u)
    z = torch.randn((1,), generator=torch.Generator().manual_seed(7)).item()
    assert _draw(7, timestep_sampling="logit_normal", logit_mean=0.5, logit_std=2.0) == pytest.approx(
        1000 / (1 + math.exp(-(0.5 + 2.0 * z))), rel=1e-5)
