"""FLUX.1 through the one generation path: FluxPipeline with the model's FlowMatchEuler scheduler (its dynamic
shift), our prompt encoding, [dev]'s guidance value; the same image as FluxPipeline called with the prompt."""

import numpy as np
import pytest
import torch

from loraforge.config import load_config
from loraforge.models.loading import load_model
from loraforge.sampling.generate import SampleRequest, generate, make_pipeline


@pytest.fixture(scope="module")
def flux():
    return load_model(load_config(None, ["model.family='flux'", "model.max_sequence_length=32"]).model)


def _request(**kw):
    base = dict(prompt="a photo of a red robot", width=64, height=64, steps=3, guidance_scale=3.5, seed=5,
                sampler="euler_a")
    return SampleRequest(**{**base, **kw})


def test_flux_samples_with_its_flow_scheduler_whatever_the_sampler(flux):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    pipe = make_pipeline(flux, "euler_a")
    assert isinstance(pipe, FluxPipeline)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert pipe.scheduler.config.use_dynamic_shifting and pipe.scheduler.config.max_shift == 1.15
    assert pipe.transformer is flux.unet  # the trained modules, LoRA included


def test_generate_equals_fluxpipeline_with_the_prompt(flux):
    ours = generate(flux, [_request()], output_type="np")[0]
    pipe = flux.pipeline()
    with torch.no_grad():
        want = pipe("a photo of a red robot", width=64, height=64, num_inference_steps=3, guidance_scale=3.5,
                    max_sequence_length=32, generator=torch.Generator("cpu").manual_seed(5), output_type="np").images[0]
    assert ours.shape == (64, 64, 3)
    np.testing.assert_allclose(ours, want, atol=1e-5)
    # the guidance value reaches [dev]'s guidance embedding; the seed decides the noise
    assert not np.allclose(ours, generate(flux, [_request(guidance_scale=1.0)], output_type="np")[0], atol=1e-4)
    assert not np.allclose(ours, generate(flux, [_request(seed=6)], output_type="np")[0], atol=1e-4)
