"""sample: txt2img / img2img with LoRA files (per-part strengths), embeddings and kohya prompt files; the PNGs carry
A1111's `parameters` chunk."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loraforge.formats.embeddings import save_embeddings
from loraforge.tools.common import LoraSpec, load_sd_model, parse_lora_spec
from loraforge.errors import FamilyMismatchError, ShapeMismatchError, ToolError
from loraforge.sampling.generate import generate
from loraforge.tools.sample import EmbeddingSpec, build_requests, load_embedding, sample


def _pixels(image) -> np.ndarray:
    """An image (PIL or a PNG path) as int16 pixels, so that differences do not wrap around."""
    return np.asarray(Image.open(image) if isinstance(image, Path) else image, dtype=np.int16)


def test_txt2img_with_lora_embedding_and_prompt_file(trained, tmp_path):
    t = trained["sd15"]
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    emb = save_embeddings(tmp_path / "sks-style.safetensors", "sd15", [vectors])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of sks-style robot --n blurry --d 7 --s 2\n# a comment\n"
                       "a red cube --ss euler --d 20 --s 2 --l 5.5\n", encoding="utf-8")
    requests = build_requests(prompt_file=str(prompts), width=64, height=64, batch=2)
    assert [r.seed for r in requests] == [7, 8, 20, 21]
    # the tiny 3-step LoRA is weak: large strengths make its effect show in 8-bit pixels
    lora = parse_lora_spec(f"{t.kohya}:unet=8:te=5")
    paths = sample(str(t.model_dir), requests, tmp_path / "out", loras=[lora], embeddings=[EmbeddingSpec(str(emb))])
    assert [p.name for p in paths] == ["00000-7.png", "00001-8.png", "00002-20.png", "00003-21.png"]
    params = [Image.open(p).text["parameters"] for p in paths]
    assert params[0].splitlines() == [
        "a photo of sks-style robot <lora:lora-sd15:5:8>",
        "Negative prompt: blurry",
        "Steps: 2, Sampler: Euler a, CFG scale: 7, Seed: 7, Size: 64x64, Model: tiny-sd15-v2",
    ]
    assert "Steps: 2, Sampler: Euler, CFG scale: 5.5, Seed: 21" in params[3]
    assert Image.open(paths[0]).size == (64, 64)
    got = [_pixels(p) for p in paths]

    # oracle: diffusers' runtime LoRA (peft layers, per-part weights) on the base model, same seeds; first without
    # the embedding (the images of the prompt that uses its token differ, the others do not), then with it (all
    # equal), then with the LoRA off (all differ)
    oracle = load_sd_model(str(t.model_dir))
    pipe = oracle.pipeline()
    pipe.load_lora_weights(str(t.kohya), adapter_name="lora")
    pipe.set_adapters("lora", {"unet": 8.0, "text_encoder": 5.0})

    def diffs():  # float rounding may move a pixel by one level
        return [int(np.abs(g - _pixels(want)).max()) for g, want in zip(got, generate(oracle, requests))]

    no_embedding = diffs()
    assert min(no_embedding[:2]) > 10 and max(no_embedding[2:]) <= 1, no_embedding
    load_embedding(oracle, EmbeddingSpec(str(emb)))
    assert max(diffs()) <= 1
    pipe.disable_lora()
    assert min(diffs()) > 10

    # a second run into the folder numbers on, as A1111 does; the first run's images stay
    before = [p.read_bytes() for p in paths]
    again = sample(str(t.model_dir), requests[:1], tmp_path / "out", loras=[lora], embeddings=[EmbeddingSpec(str(emb))])
    assert [p.name for p in again] == ["00004-7.png"]
    assert [p.read_bytes() for p in paths] == before


def test_lora_named_by_its_run_folder(trained, tmp_path):
    from loraforge.tools.common import find_lora_file

    t = trained["sd15"]
    run = t.kohya.parent
    assert find_lora_file(run) == t.kohya  # the kohya file, not pytorch_lora_weights.safetensors
    requests = build_requests("a robot", steps=1, width=64, height=64)
    by_folder = sample(None, requests, tmp_path / "a", loras=[parse_lora_spec(f"{run}:0.5")])[0]
    by_file = sample(None, requests, tmp_path / "b", loras=[parse_lora_spec(f"{t.kohya}:0.5")])[0]
    assert Image.open(by_folder).text["parameters"].startswith("a robot <lora:lora-sd15:0.5>")
    assert list(Image.open(by_folder).getdata()) == list(Image.open(by_file).getdata())
    (tmp_path / "two").mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        (tmp_path / "two" / name).write_bytes(t.kohya.read_bytes())
    with pytest.raises(ToolError, match="a.safetensors, b.safetensors; name the LoRA file itself"):
        find_lora_file(tmp_path / "two")


def test_img2img_follows_the_init_image_and_strength(trained, tmp_path):
    t = trained["sd15"]
    g = torch.Generator().manual_seed(0)
    init, other = (Image.fromarray((torch.rand(72, 80, 3, generator=g) * 255).byte().numpy()) for _ in range(2))
    init.save(tmp_path / "init.png")
    requests = build_requests("a robot", steps=4, seed=5, sampler="ddim") * 2  # the same request twice
    a, b = sample(str(t.model_dir), requests, tmp_path / "a", init_image=str(tmp_path / "init.png"), strength=0.25)
    image = Image.open(a)
    assert image.size == (80, 72)  # the init image's size, rounded to multiples of 8
    assert "Denoising strength: 0.25" in image.text["parameters"]
    got = _pixels(a)
    assert np.array_equal(got, _pixels(b))  # same seed, same image

    model = load_sd_model(str(t.model_dir))
    request = replace(requests[0], width=80, height=72)

    def run(init_image, strength):
        return _pixels(generate(model, [request], init_image=init_image, strength=strength)[0])

    assert np.abs(got - run(init, 0.25)).max() <= 1  # what `sample` did: this init image at this strength
    other_diff = np.abs(got - run(other, 0.25)).mean()
    assert other_diff > 5  # another init image, another output
    full, full_other = run(init, 1.0), run(other, 1.0)
    assert np.abs(got - full).mean() > 5  # another strength, another output
    # the lower the strength, the more of the init image is left (at 1.0 only a trace of it)
    assert other_diff > 5 * np.abs(full - full_other).mean()


def test_lora_spec_parsing():
    assert parse_lora_spec("a.safetensors") == LoraSpec("a.safetensors", 1.0, 1.0)
    assert parse_lora_spec("C:\\x\\a.safetensors:0.7", unet_scale=0.5) == LoraSpec("C:\\x\\a.safetensors", 0.35, 0.7)
    assert parse_lora_spec("a.safetensors:0.8:te=0.2") == LoraSpec("a.safetensors", 0.8, 0.2)


def test_sdxl_embedding_goes_into_both_encoders(trained, tmp_path):
    model = load_sd_model(str(trained["sdxl"].model_dir))
    vectors = [torch.randn(2, 32), torch.randn(2, 64)]
    path = save_embeddings(tmp_path / "y2k.safetensors", "sdxl", vectors)
    load_embedding(model, EmbeddingSpec(str(path), "<y2k>"))
    for tok, te, v in zip(model.tokenizers, model.text_encoders, vectors):
        ids = tok.convert_tokens_to_ids(["<y2k>", "<y2k>_1"])
        assert torch.equal(te.get_input_embeddings().weight[ids].detach(), v)
    sd1 = save_embeddings(tmp_path / "sd1.safetensors", "sd15", [torch.randn(1, 32)])
    with pytest.raises(FamilyMismatchError, match="an SD 1.x/SD 2.x/FLUX.1 embedding"):
        load_embedding(model, EmbeddingSpec(str(sd1)))
    wide = save_embeddings(tmp_path / "wide.safetensors", "sdxl", [torch.randn(1, 768), torch.randn(1, 64)])
    with pytest.raises(ShapeMismatchError, match="768 wide"):
        load_embedding(model, EmbeddingSpec(str(wide)))


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_prompt_embeds_equal_the_pipelines_with_a_multi_vector_embedding(tiny_dirs, tmp_path, family):
    """`generate` encodes prompts itself (clip skip, trained tokens); with a 2-vector embedding its token must expand
    to `tok tok_1` in every tokenizer, as diffusers' own `encode_prompt` does."""
    from loraforge.sampling.generate import encode_for_pipeline

    model = load_sd_model(str(tiny_dirs[family]))
    g = torch.Generator().manual_seed(1)
    vectors = [torch.randn(2, 32, generator=g)] + ([torch.randn(2, 64, generator=g)] if family == "sdxl" else [])
    load_embedding(model, EmbeddingSpec(str(save_embeddings(tmp_path / "sks-style.safetensors", family, vectors))))
    pipe = model.pipeline()
    prompt, negative = "a photo of sks-style robot", "blurry, sks-style"
    ours = encode_for_pipeline(model, pipe, prompt, negative)
    with torch.no_grad():
        if family == "sdxl":
            want = dict(zip(("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                             "negative_pooled_prompt_embeds"),
                            pipe.encode_prompt(prompt, device="cpu", negative_prompt=negative)))
        else:
            want = dict(zip(("prompt_embeds", "negative_prompt_embeds"),
                            pipe.encode_prompt(prompt, "cpu", 1, True, negative)))
    assert ours.keys() == want.keys()
    for key, value in want.items():
        assert torch.equal(ours[key], value), key


def test_sample_clip_skip_and_keyword_only_options(tiny_dirs, tmp_path):
    """`loraforge sample --clip-skip` reaches the one `generate` (as `training.clip_skip` does); the options after the
    model, requests and folder are keyword-only, so a call with them in the wrong order fails."""
    from loraforge.cli import main

    requests = build_requests("a robot", steps=1, width=64, height=64, seed=2)
    assert main(["sample", "--prompt", "a robot", "--steps", "1", "--width", "64", "--height", "64", "--seed", "2",
                 "--clip-skip", "1", "-o", str(tmp_path / "cli")]) == 0
    got = _pixels(tmp_path / "cli" / "00000-2.png")
    model = load_sd_model(None)
    # the same path, so the very same pixels; without clip skip some differ (the tiny 1-step model moves few levels)
    assert np.array_equal(got, _pixels(generate(model, requests, clip_skip=1)[0]))
    assert not np.array_equal(got, _pixels(generate(model, requests)[0]))
    with pytest.raises(TypeError):
        sample(None, requests, tmp_path / "x", [], [], "sd15")
