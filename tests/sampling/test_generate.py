"""The one generation path batches: requests that differ only in prompt, negative prompt and seed run as one batch
(`generate(batch_size=)`, `loraforge sample --batch-size`, `loraforge eval`), and each image is the one its own
request gives alone, up to the float rounding of batched convolutions."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from loraforge.sampling.generate import SampleRequest, _batches, generate

BASE = SampleRequest("", width=64, height=64, steps=2, guidance_scale=5.0, sampler="euler")
REQUESTS = [
    replace(BASE, prompt="a red robot", seed=1),
    replace(BASE, prompt="a blue house by the sea", negative_prompt="blurry", seed=2),
    replace(BASE, prompt="a red robot", seed=3),
    replace(BASE, prompt="a green tree", width=96, seed=4),  # another size: apart
    replace(BASE, prompt="a yellow cat", seed=5),
]


def _unet_batches(model, monkeypatch) -> list[int]:
    """The batch size of every denoiser call (CFG doubles it)."""
    seen: list[int] = []
    forward = model.unet.forward

    def counting(sample, *args, **kwargs):
        seen.append(sample.shape[0])
        return forward(sample, *args, **kwargs)

    monkeypatch.setattr(model.unet, "forward", counting)
    return seen


def test_batches_group_consecutive_requests_of_the_same_settings():
    groups = _batches(REQUESTS, 4)
    assert [[r.seed for r in g] for g in groups] == [[1, 2, 3], [4], [5]]
    assert [[r.seed for r in g] for g in _batches(REQUESTS, 2)] == [[1, 2], [3], [4], [5]]
    assert [len(g) for g in _batches(REQUESTS, 1)] == [1] * 5


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_a_batch_of_prompts_gives_each_request_its_own_image(tiny_models, monkeypatch, family):
    model = tiny_models(family)
    alone = [np.asarray(i, dtype=np.int16) for i in generate(model, REQUESTS)]
    seen = _unet_batches(model, monkeypatch)
    batched = [np.asarray(i, dtype=np.int16) for i in generate(model, REQUESTS, batch_size=4)]
    assert seen == [6, 6, 2, 2, 2, 2]  # 3 requests at once (x2 for CFG), 2 steps; then the 96 px one, the last
    assert [i.shape for i in batched] == [i.shape for i in alone]
    for a, b in zip(alone, batched):
        assert np.abs(a - b).max() <= 2
    # each image is its own prompt's: the prompts' images differ far more than the batching rounding
    assert np.abs(batched[0] - batched[1]).max() > 20 and np.abs(batched[0] - batched[2]).max() > 20


def test_flux_batches_prompts_too():
    from loraforge.config import load_config
    from loraforge.models.loading import load_model

    flux = load_model(load_config(None, ["model.family='flux'", "model.max_sequence_length=32"]).model)
    reqs = [SampleRequest(p, width=64, height=64, steps=2, guidance_scale=3.5, seed=s)
            for p, s in (("a photo of a red robot", 5), ("a small blue house", 6))]
    alone = [np.asarray(i, dtype=np.int16) for i in generate(flux, reqs)]
    batched = [np.asarray(i, dtype=np.int16) for i in generate(flux, reqs, batch_size=2)]
    for a, b in zip(alone, batched):
        assert np.abs(a - b).max() <= 2
    assert np.abs(batched[0] - batched[1]).max() > 20


def test_cli_sample_batch_size_writes_the_same_images(tiny_dirs, tmp_path):
    from loraforge.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red robot --d 1\na blue house --n blurry --d 2\na green tree --d 3\n")
    args = ["sample", "--prompt-file", str(prompts), "--steps", "2", "--width", "64", "--height", "64"]
    assert main(args + ["-o", str(tmp_path / "one")]) == 0
    assert main(args + ["--batch-size", "3", "-o", str(tmp_path / "three")]) == 0
    one, three = sorted((tmp_path / "one").glob("*.png")), sorted((tmp_path / "three").glob("*.png"))
    assert [p.name for p in one] == [p.name for p in three] == ["00000-1.png", "00001-2.png", "00002-3.png"]
    for a, b in zip(one, three):
        from PIL import Image

        assert np.abs(np.asarray(Image.open(a), dtype=np.int16) - np.asarray(Image.open(b), dtype=np.int16)).max() <= 2
