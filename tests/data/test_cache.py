"""Latent and text-encoder caches: hits, misses, stale entries, disk persistence, equality with live encoding,
and the combinations that are refused."""

import pytest
import torch
from PIL import Image

from loraforge.config import load_config
from loraforge.data.build import build_train_data, check_cache_options
from loraforge.data.cache import CACHE_FOLDER, CacheContext, sample_latents, vae_scaling
from loraforge.errors import DataError
from loraforge.models.text import encode_prompts


@pytest.fixture(scope="module")
def sdxl(tiny_dirs):
    from loraforge.models.loading import load_model

    return load_model(load_config(None, ["model.family=sdxl"]).model)


def images(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (40 * i, 90, 200 - 30 * i)).save(folder / f"{i}.png")
    return folder


def data_for(folder, *sets):
    cfg = load_config(None, [f"dataset.instance_dir={str(folder)!r}", "dataset.instance_prompt='sks'",
                             "dataset.min_image_size=16", *sets])
    return build_train_data(cfg, 64)


class Counting:
    """The VAE, counting the images it encodes."""

    def __init__(self, vae):
        self.vae, self.encoded, self.config = vae, 0, vae.config

    def encode(self, x):
        self.encoded += x.shape[0]
        return self.vae.encode(x)

    def parameters(self):
        return self.vae.parameters()


def ctx_for(model, vae=None):
    return CacheContext(vae=vae or model.vae, text_encoders=model.text_encoders, tokenizers=model.tokenizers,
                        family=model.family, vae_batch_size=2)


def test_disk_latent_cache_hits_misses_and_stale_entries(tmp_path, sdxl):
    folder = images(tmp_path / "img", [(64, 64), (120, 40), (64, 80)])
    disk = "dataset.cache_latents_to_disk=true"
    vae = Counting(sdxl.vae)
    first = data_for(folder, disk).fill_caches(ctx_for(sdxl, vae))
    assert first["latents"] == {"hits": 0, "misses": 3} and vae.encoded == 3
    files = sorted((folder / CACHE_FOLDER).glob("*.safetensors"))
    assert len(files) == 3
    # a new run (new dataset and cache objects, as in a new process) reuses every entry
    assert data_for(folder, disk).fill_caches(ctx_for(sdxl, vae))["latents"] == {"hits": 3, "misses": 0}
    assert vae.encoded == 3
    # changed image bytes, same size and name: only that entry is stale
    Image.new("RGB", (120, 40), (1, 2, 3)).save(folder / "1.png")
    assert data_for(folder, disk).fill_caches(ctx_for(sdxl, vae))["latents"] == {"hits": 2, "misses": 1}
    # another bucket and crop (buckets on: the wide image gets 96×32) and flips (both orientations)
    stats = data_for(folder, disk, "dataset.enable_bucket=true", "dataset.bucket_reso_steps=32").fill_caches(
        ctx_for(sdxl, vae))
    assert stats["latents"] == {"hits": 2, "misses": 1}
    flips = data_for(folder, disk, "dataset.random_flip=true").fill_caches(ctx_for(sdxl, vae))
    assert flips["latents"] == {"hits": 3, "misses": 3}
    # another VAE (its weights changed): everything misses
    with torch.no_grad():
        next(sdxl.vae.parameters()).add_(0.01)
    try:
        assert data_for(folder, disk).fill_caches(ctx_for(sdxl, vae))["latents"]["misses"] == 3
    finally:
        with torch.no_grad():
            next(sdxl.vae.parameters()).sub_(0.01)


def test_cached_latents_equal_the_live_vae_and_skip_decoding(tmp_path, sdxl):
    folder = images(tmp_path / "img", [(64, 64), (80, 64)])
    data = data_for(folder, "dataset.cache_latents=true", f"dataset.cache_dir={str(tmp_path / 'c')!r}",
                    "dataset.random_flip=true")
    stats = data.fill_caches(ctx_for(sdxl))
    assert stats["latents"]["misses"] == 4 and not (tmp_path / "c").exists()  # in memory
    ds = data.dataset
    scale, shift = vae_scaling(sdxl.vae)
    for epoch in range(3):
        for i in range(len(ds)):
            ex = ds[(epoch, i)]
            assert ex.pixel_values is None and ex.latents.shape == (4, 8, 8)
            ds.latent_cache, cache = None, ds.latent_cache
            live = ds[(epoch, i)]  # the uncached path: same flip, crop and sizes
            ds.latent_cache = cache
            assert (live.original_size, live.crop_top_left, live.latent_seed) == (
                ex.original_size, ex.crop_top_left, ex.latent_seed)
            with torch.no_grad():
                dist = sdxl.vae.encode(live.pixel_values[None]).latent_dist
            want = sample_latents(dist.mean, dist.std, [live.latent_seed], scale, shift)[0]
            torch.testing.assert_close(ex.latents, want, rtol=0, atol=1e-5)


def test_cache_dir_option_and_the_vae_dtype(tmp_path, sdxl):
    import copy

    from safetensors.torch import load_file

    folder = images(tmp_path / "img", [(64, 64)])
    data = data_for(folder, "dataset.cache_latents_to_disk=true", f"dataset.cache_dir={str(tmp_path / 'c')!r}")
    data.fill_caches(ctx_for(sdxl))
    (f32,) = list((tmp_path / "c").glob("*.safetensors"))
    assert not (folder / CACHE_FOLDER).exists() and load_file(str(f32))["mean"].dtype == torch.float32
    ctx = ctx_for(sdxl, copy.deepcopy(sdxl.vae).to(torch.bfloat16))
    ctx.vae_dtype = torch.bfloat16
    assert data.fill_caches(ctx)["latents"]["misses"] == 1  # another VAE dtype: another entry
    (bf16,) = set((tmp_path / "c").glob("*.safetensors")) - {f32}
    assert load_file(str(bf16))["mean"].dtype == torch.bfloat16
    assert data.dataset[0].latents.dtype == torch.float32


def test_random_crop_with_cached_latents_is_refused(tmp_path):
    folder = images(tmp_path / "img", [(64, 64)])
    with pytest.raises(DataError, match="cache_latents cannot be combined with random crops.*center_crop = true"):
        data_for(folder, "dataset.cache_latents=true", "dataset.center_crop=false")


def test_text_encoder_cache_equals_live_encoding(tmp_path, sdxl):
    folder = images(tmp_path / "img", [(64, 64), (64, 64), (64, 64)])
    (folder / "1.txt").write_text("a robot, red")
    data = data_for(folder, "dataset.cache_text_encoder_outputs_to_disk=true", "dataset.caption_prefix='pre'",
                    "dataset.keep_tokens_separator='|||'")
    stats = data.fill_caches(ctx_for(sdxl))
    assert stats["text"] == {"hits": 0, "misses": 2}  # two distinct captions
    ex = data.dataset[1]
    with torch.no_grad():
        live = encode_prompts(sdxl.family, sdxl.tokenizers, sdxl.text_encoders, [ex.caption])
    torch.testing.assert_close(ex.prompt_embeds, live.prompt_embeds[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(ex.pooled, live.pooled[0], rtol=0, atol=1e-6)
    again = data_for(folder, "dataset.cache_text_encoder_outputs_to_disk=true", "dataset.caption_prefix='pre'",
                     "dataset.keep_tokens_separator='|||'").fill_caches(ctx_for(sdxl))
    assert again["text"] == {"hits": 2, "misses": 0}


@pytest.mark.parametrize("sets,named", [
    (["dataset.shuffle_caption=true"], "dataset.shuffle_caption"),
    (["dataset.caption_dropout_rate=0.1"], "dataset.caption_dropout_rate"),
    (["dataset.caption_tag_dropout_rate=0.1"], "dataset.caption_tag_dropout_rate"),
    (["dataset.enable_wildcard=true"], "dataset.enable_wildcard"),
    (["dataset.caption_dropout_every_n_epochs=3"], "dataset.caption_dropout_every_n_epochs"),
    (["network.train_text_encoder=true"], "network.train_text_encoder"),
])
def test_text_encoder_cache_refusals_name_both_options(tmp_path, sets, named):
    folder = images(tmp_path / "img", [(64, 64)])
    with pytest.raises(DataError) as e:
        data_for(folder, "dataset.cache_text_encoder_outputs=true", *sets)
    msg = str(e.value)
    assert msg.startswith(f"dataset.cache_text_encoder_outputs cannot be combined with {named}:")
    assert "turn dataset.cache_text_encoder_outputs off" in msg


def test_text_encoder_cache_refused_with_pivotal_tuning():
    cfg = load_config(None, ["dataset.cache_text_encoder_outputs_to_disk=true", "training.train_text_encoder_ti=true"])
    with pytest.raises(DataError, match="_to_disk cannot be combined with training.train_text_encoder_ti: pivotal"):
        check_cache_options(cfg, [])
    check_cache_options(load_config(None, ["dataset.cache_text_encoder_outputs_to_disk=true"]), [])  # fine


def test_a_killed_cache_write_is_cleaned_at_the_next_fill_but_not_a_live_one(tmp_path, sdxl):
    import os
    import time

    folder = images(tmp_path / "img", [(64, 64)])
    cache = tmp_path / "c"
    cache.mkdir()
    stale, live = cache / ".abc.safetensors.tmp-x1.safetensors", cache / ".def.safetensors.tmp-x2.safetensors"
    for path in (stale, live):
        path.write_bytes(b"")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    data = data_for(folder, "dataset.cache_latents_to_disk=true", f"dataset.cache_dir={str(cache)!r}")
    data.fill_caches(ctx_for(sdxl))
    assert not stale.exists() and live.exists()
    assert len([p for p in cache.glob("*.safetensors") if not p.name.startswith(".")]) == 1  # the entry itself


def test_text_cache_with_chunked_prompts_holds_152_states_and_is_not_reused_at_75(tmp_path, sdxl):
    folder = images(tmp_path / "img", [(64, 64)])
    (folder / "0.txt").write_text(" ".join(["robot"] * 100))  # 102 tokens with start and end
    disk = "dataset.cache_text_encoder_outputs_to_disk=true"
    data = data_for(folder, disk, "dataset.max_token_length=150")
    ctx = ctx_for(sdxl)
    ctx.max_token_length = 150
    assert data.fill_caches(ctx)["text"] == {"hits": 0, "misses": 1}
    ex = data.dataset[0]
    with torch.no_grad():
        live = encode_prompts(sdxl.family, sdxl.tokenizers, sdxl.text_encoders, [ex.caption], None, 150)
    assert ex.prompt_embeds.shape[0] == 152
    torch.testing.assert_close(ex.prompt_embeds, live.prompt_embeds[0], rtol=0, atol=1e-6)
    assert not any("tokens are cut" in n for n in data.notes)  # 152 tokens read: nothing cut
    short = data_for(folder, disk)
    assert any("longer than the text encoder's 77 tokens" in n and "max_token_length = 150 or 225" in n
               for n in short.notes)
    assert short.fill_caches(ctx_for(sdxl))["text"] == {"hits": 0, "misses": 1}  # 77-token entries are others
    assert short.dataset[0].prompt_embeds.shape[0] == 77


def test_color_aug_with_cached_latents_is_refused(tmp_path):
    folder = images(tmp_path / "img", [(64, 64)])
    with pytest.raises(DataError, match="cache_latents cannot be combined with dataset.color_aug.*turn color_aug or"):
        data_for(folder, "dataset.cache_latents=true", "dataset.color_aug=true")
