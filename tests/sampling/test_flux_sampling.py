"""FLUX.1 through the one generation path: FluxPipeline with the model's FlowMatchEuler scheduler (its dynamic
shift), our prompt encoding, [dev]'s guidance value; the same image as FluxPipeline called with the prompt."""

import numpy as np
import pytest
import torch

from loraforge.config import load_config
from loraforge.config.samplers import A1111_NAMES
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


def test_unset_steps_and_guidance_are_the_models(flux, tmp_path):
    """[sampling] and `loraforge sample` leave steps and guidance to the model: FLUX.1 [dev] 28 steps at guidance
    3.5, [schnell] 4 (no guidance embedding), SD 25 at CFG 7; a value that is set wins."""
    from dataclasses import replace

    from loraforge.sampling.generate import with_model_defaults
    from loraforge.sampling.run import base_request

    cfg = load_config(None, ["model.family='flux'"])
    unset = base_request(cfg, (64, 64))
    assert (unset.steps, unset.guidance_scale) == (None, None)
    dev = with_model_defaults(flux, [unset])[0]
    assert (dev.steps, dev.guidance_scale) == (28, 3.5)
    # as Forge writes FLUX images: it reads "CFG scale" as true CFG, the guidance as "Distilled CFG Scale"
    assert ("Steps: 28, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG Scale: 3.5, Seed: 0"
            in dev.parameters_text())
    kept = with_model_defaults(flux, [replace(unset, steps=3, guidance_scale=1.0)])[0]
    assert (kept.steps, kept.guidance_scale) == (3, 1.0)
    flux.unet.register_to_config(guidance_embeds=False)  # what a [schnell] transformer's config says
    try:
        schnell = with_model_defaults(flux, [unset])[0]
    finally:
        flux.unet.register_to_config(guidance_embeds=True)
    assert (schnell.steps, schnell.guidance_scale) == (4, 0.0)
    assert "CFG scale: 1, Seed" in schnell.parameters_text() and "Distilled" not in schnell.parameters_text()
    sd = with_model_defaults(load_model(load_config(None, ["model.family='sd15'"]).model), [unset])[0]
    assert (sd.steps, sd.guidance_scale) == (25, 7.0)
    assert f"Sampler: {A1111_NAMES[sd.sampler]}, CFG scale: 7, Seed" in sd.parameters_text()
